"""An LM head kept in wider GGUF blocks, read through a 4-bit copy with its best rows exact.

Gemma 3 270M's head is its tied embedding: 262,144 rows of Q8_0 blocks, 178 MB that a decode
step reads from memory, half of the step. `RequantizedHead` reads it as the default model's int4
head does (`chatapp.runtime.quantize.OutputHead`): a pass over every row in a 4-bit copy
(chatapp's int4 kernel; 105 MB for Gemma), then the `EXACT_TOP` best rows of that pass, and any
watched ones, recomputed in float32 from the file's own blocks (the block kernel's
`exact_logits`). The candidates shown, the greedy choice and the top-k distribution for k up
to `EXACT_TOP` are the exact head's numbers when the true best rows are among the pass's best,
which the tests and the README's measurements check; the far tail, in the softmax's normaliser
and the entropy (and a token drawn from beyond the best rows, with top-k off or above
`EXACT_TOP`), keeps the 4-bit rounding.

The copy is made on a kernel thread (`chatapp.runtime.kernel_switch.requantize_in_background`,
half a second for Gemma), only where the int4 kernel was built before (`make setup` builds it;
a GGUF model never starts its compile) and the block kernel runs its AVX512 build (whose exact
rows are the int4 kernel's to the last bit, so that the native and the Python step agree). The
head's first call waits for it (`wait`), so that every step of a session reads the same head (a
reply is the same for the same seed). For more than one context vector at a time (a prefill's
or the lens's) the head is the exact one.
"""

from __future__ import annotations

import threading

import torch
from torch import nn

from chatapp.runtime import block_kernel, int4_kernel
from chatapp.runtime.block_linear import BlockLinear, ScaledBlocks
from chatapp.runtime.quantize import EXACT_TOP, NO_ROWS

REQUANTIZE_FROM_ROWS = 32768
"""Heads with fewer rows stay exact: their pass is short either way."""
REQUANTIZE_FROM_BITS = 6
"""Heads in blocks of fewer bits stay exact: a 4-bit copy (5 bits a weight with its scales) would
read at most a tenth fewer bytes than a 5-bit type's (5.5-6 bits a weight); Q6_K's (held as 8-bit
codes) and Q8_0's (6.6 and 8.5 bits a weight) are worth it."""

WAIT_SECONDS = 30.0
"""Longest the head's first call waits for its copy (about half a second on Gemma 3 270M)."""


def requantizable(head: nn.Module, min_rows: int | None = None) -> bool:
    """Whether `head` is a bias-free `BlockLinear` on the block kernel's AVX512 build, of at least
    `min_rows` rows (None: `REQUANTIZE_FROM_ROWS`) of `REQUANTIZE_FROM_BITS` bits or more, shaped
    for the int4 kernel (K a multiple of 64, N of 4), that kernel wanted here and built before."""
    min_rows = REQUANTIZE_FROM_ROWS if min_rows is None else min_rows
    return (type(head) is BlockLinear and head.bias is None and head.kernel is not None
            and head.weights.bits >= REQUANTIZE_FROM_BITS and head.out_features >= min_rows
            and head.out_features % 4 == 0 and head.in_features % 64 == 0
            and block_kernel.build_for_cpu() == "avx512" and int4_kernel.wanted() is None and int4_kernel.built())


class RequantizedHead(nn.Module):
    """`blocks`' logits: for one context vector, once `kernel_parts` is set, a 4-bit pass with
    its best rows exact; otherwise `blocks`' own."""

    def __init__(self, blocks: BlockLinear, exact_top: int = EXACT_TOP, wait: bool = False) -> None:
        """Read `blocks` exactly until `kernel_parts` is set; with `wait`, the first call waits
        (at most `WAIT_SECONDS`) until `settled`."""
        super().__init__()
        self._wait = wait
        self.blocks = blocks
        self.in_features, self.out_features = blocks.in_features, blocks.out_features
        self.vocab_rows = blocks.out_features
        self.exact_top = min(exact_top, self.vocab_rows)
        self.kernel_parts: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        """The 4-bit copy in the int4 kernel's layout (`int4_layout.requantized`), once made."""
        self.always_exact: torch.Tensor | None = None
        """`(W,)` ids whose logits are recomputed in float32 too, wherever they rank (watched tokens)."""
        self.settled = threading.Event()
        """Set once the copy is made or will not be."""

    @property
    def note(self) -> str:
        """What this head does to the numbers, for the model's notes (`ask --json`)."""
        return (f"LM head read through a 4-bit copy, its best {self.exact_top} rows exact from the file's blocks "
                "(the far tail of the distribution 4-bit)")

    @property
    def exact_blocks(self) -> ScaledBlocks:
        """The file's blocks, from which the exact rows are recomputed."""
        return self.blocks.weights

    @property
    def exact_ids(self) -> torch.Tensor:
        """The rows recomputed exactly beside the best ones: the watched tokens (or none)."""
        return self.always_exact if self.always_exact is not None else NO_ROWS

    def four_bit(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The copy's tensors, or None while it is not ready (the first call waits, with `wait`)."""
        if self._wait:
            self._wait = False
            self.settled.wait(WAIT_SECONDS)
        return self.kernel_parts

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N) float32
        parts = self.four_bit()
        if parts is None or hidden.dim() != 1:
            return self.blocks(hidden)
        x = hidden.float().contiguous()
        logits = torch.ops.chatapp.int4_linear(x.reshape(1, -1), *parts)[0]
        self.blocks.kernel.exact_logits(logits, x, self.exact_top, self.exact_ids, *self.exact_blocks.kernel_args())
        return logits

    def extra_repr(self) -> str:
        state = "4-bit pass" if self.kernel_parts is not None else "4-bit pass not ready"
        return f"{state}, exact top {self.exact_top}"
