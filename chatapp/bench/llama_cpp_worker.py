"""llama.cpp's side of `chatapp bench`: one GGUF file, measured reply by reply, on request.

Run by `chatapp.bench.llama_cpp_peer` with the Python of llama.cpp's own virtual environment (its
binding, `llama_cpp`, is not one of chatapp's dependencies), so this script imports nothing of
chatapp. Usage: `PYTHON llama_cpp_worker.py MODEL.gguf --threads N --n-ctx N`. It prints one JSON
line when the model is loaded, then answers each JSON line on stdin,
`{"prompt_ids": [...], "tokens": N, "temperature": T, "top_k": K}`, with one JSON line:
`{"tok_per_s", "ttft_ms", "tokens"}`. A fresh context each time (no prompt-cache hit): the time to
the first token includes reading the whole prompt, as chatapp's bench measures itself. The
sampler is llama.cpp's own, with no filter beyond top-k (top-p 1, min-p 0, no repetition
penalty), as chatapp samples by default. On end of input it prints its peak RSS and exits.
"""

import argparse
import json
import os
import resource
import sys
import time

# This folder is first on sys.path when the script runs: nothing in it may stand in for llama_cpp.
sys.path = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]


def main() -> int:
    """Load the model, then measure each requested reply."""
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    args = parser.parse_args()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=args.threads,
                          n_threads_batch=args.threads, verbose=False, seed=0)
    print(json.dumps({"ready": True, "version": llama_cpp.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        print(json.dumps(measure(llm, request)), flush=True)
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}), flush=True)
    return 0


def peak_rss_mib() -> float:
    """This process's peak resident memory: on Linux its own high-water mark (`VmHWM`), since
    `ru_maxrss` also keeps the peak of the bench process this one was forked from."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(llm, request: dict) -> dict:
    """One reply to `request["prompt_ids"]`: decode tokens/s after the first token, and the time
    to the first token."""
    llm.reset()  # a fresh context: the whole prompt is read again
    times = []
    start = time.perf_counter()
    for token in llm.generate(request["prompt_ids"], temp=request["temperature"], top_k=request["top_k"],
                              top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        times.append(time.perf_counter())
        if token == llm.token_eos() or len(times) >= request["tokens"]:
            break
    n = len(times)
    return {"tok_per_s": (n - 1) / (times[-1] - times[0]) if n > 1 else 0.0,
            "ttft_ms": (times[0] - start) * 1000.0 if times else 0.0, "tokens": n}


if __name__ == "__main__":
    sys.exit(main())
