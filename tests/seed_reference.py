"""The seed document's code, verbatim apart from the print (../shared/seed/000_ea6efaac940ed9f8.txt).

Tests compare chatapp.lm_head against it.
"""

import torch
import torch.nn.functional as F


def lm_head(model, last_token_context_vector, temperature=0.7, k=50):
    # Get Logits from the Language Modeling Head
    ## Project matrix for d_model (model dimension) to d_vocabulary (vocabulary dimensions)
    lm_head = model.get_output_embeddings()
    ## Project last_token_context_vector and extract logits
    logits = lm_head(last_token_context_vector)
    # Implement Temperature Scaling
    scaled_logits = logits / temperature
    # Implement Top-K Sampling
    top_k_logits, top_k_indices = torch.topk(scaled_logits, k)
    filtered_logits = torch.full_like(logits, -float("Inf"))
    filtered_logits.scatter_(0, top_k_indices, top_k_logits)
    # Convert the filtered logits into a probability distribution
    probabilities = F.softmax(filtered_logits, dim=-1)
    return probabilities


def get_top_token(probabilities, tokenizer, top_n=1):
    final_token_id = torch.multinomial(probabilities, num_samples=top_n)
    final_token = tokenizer.decode(final_token_id.tolist())
    return final_token
