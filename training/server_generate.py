"""Greedy continuations from an OpenAI-compatible completions server (vLLM), for evaluation at serving speed.

    texts = [tool_prompt_text(tokenizer, e) for e in examples]          # the same templated prompts as in-process
    outputs = server_texts("http://127.0.0.1:8000/v1", "adapter-a", texts, max_new_tokens=96)

The prompts go as text to /v1/completions (the template already applied, so the server's chat template
plays no part), temperature 0, the adapter chosen by its served name (vLLM's --lora-modules name, or the
base model's name for the base). Prompts longer than max_prompt_tokens keep their most recent tokens
(vLLM's truncate_prompt_tokens), as training.evaluate.generate_texts does in process. Requests run
`concurrency` at a time so the server batches them; the replies come back in the order of `texts`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import requests


class ServerGenerationError(RuntimeError):
    """A completion request failed; names the prompt's index and the server's answer."""


def server_texts(
    base_url: str,
    model: str,
    texts: Sequence[str],
    max_new_tokens: int = 64,
    max_prompt_tokens: int = 1024,
    concurrency: int = 8,
    headers: dict[str, str] | None = None,
    timeout_s: float = 600.0,
    progress: bool | None = None,
) -> list[str]:
    """Greedy continuations of already-templated prompt texts, in their order (stripped, special tokens dropped)."""
    from tqdm.auto import tqdm

    url = f"{base_url.rstrip('/')}/completions"
    session = requests.Session()

    def one(i: int) -> str:
        body = {
            "model": model,
            "prompt": texts[i],
            "max_tokens": int(max_new_tokens),
            "temperature": 0.0,
            "truncate_prompt_tokens": int(max_prompt_tokens),
            "skip_special_tokens": True,
        }
        try:
            r = session.post(url, json=body, headers=headers or {}, timeout=timeout_s)
        except requests.RequestException as exc:
            raise ServerGenerationError(f"prompt {i}: {url} unreachable: {exc}") from exc
        if r.status_code != 200:
            raise ServerGenerationError(f"prompt {i}: {url} answered {r.status_code}: {r.text[:300]}")
        return r.json()["choices"][0]["text"].strip()

    bar = tqdm(total=len(texts), desc=f"generating ({model})", unit="prompt", disable=progress is False)
    out: list[str] = [""] * len(texts)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for i, text in zip(range(len(texts)), pool.map(one, range(len(texts))), strict=True):
            out[i] = text
            bar.update(1)
    bar.close()
    return out
