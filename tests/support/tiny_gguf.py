"""Tiny, deterministic GGUF models that the real ``llama-server`` can serve.

Written offline in well under a second with the ``gguf`` package and numpy (no
torch, no converter, no network). The weights are seeded, so every run writes
identical bytes. Each file is about 0.5 MB of F32 tensors.

* :func:`write_chat_model`: ``llama`` architecture, 2 layers, n_embd 64, 4 heads,
  byte-level BPE vocab (256 byte tokens, a few merges, ``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>``) and a ChatML chat template. The output layer
  pushes control tokens and every byte outside a small printable-ASCII set far
  down, so greedy (temperature 0) text is plain ASCII and repeatable. The model
  never emits EOS in practice: always send ``max_tokens`` (then
  ``finish_reason`` is ``"length"``).
* :func:`write_embedding_model`: ``bert`` with a WordPiece vocab, pooling MEAN;
  serve with ``--embeddings``.
* :func:`write_reranker_model`: the same with pooling RANK and a one-label
  ``cls`` head; serve with ``--reranking``.

``python -m tests.support.tiny_gguf OUTDIR`` writes all three into OUTDIR.
"""

from __future__ import annotations

import string
import sys
from pathlib import Path

import gguf
import numpy as np

CHAT_FILENAME = "tiny-chat.gguf"
EMBEDDING_FILENAME = "tiny-embedding.gguf"
RERANKER_FILENAME = "tiny-reranker.gguf"

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Characters the chat model may generate (everything else is pushed far down).
_CHAT_ALLOWED = set(string.ascii_letters + string.digits + " .,!?-")
_CHAT_MERGES = [
    ("Ġ", "t"),
    ("h", "e"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("Ġt", "he"),
    ("Ġ", "s"),
    ("r", "e"),
]
_CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode character map (byte-level BPE)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _normal(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _write(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _check_unique(tokens: list[str]) -> None:
    # llama.cpp aborts (SIGABRT) on a vocab with duplicate token strings.
    if len(set(tokens)) != len(tokens):
        raise ValueError("duplicate token strings in vocab")


# ----------------------------------------------------------------------------- chat


def write_chat_model(path: str | Path) -> Path:
    """Write the tiny ``llama`` chat model (ChatML, byte-level BPE) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    byte_map = _bytes_to_unicode()

    tokens = [byte_map[b] for b in range(256)]  # token id == byte value
    merges = []
    for a, b in _CHAT_MERGES:
        assert a in tokens and b in tokens, (a, b)
        tokens.append(a + b)
        merges.append(f"{a} {b}")
    n_normal = len(tokens)
    tokens += _CHAT_SPECIALS
    _check_unique(tokens)
    n_vocab = len(tokens)
    token_types = [gguf.TokenType.NORMAL] * n_normal + [gguf.TokenType.CONTROL] * len(
        _CHAT_SPECIALS
    )
    unicode_to_byte = {c: b for b, c in byte_map.items()}

    def printable(tok_id: int) -> bool:
        if tok_id >= n_normal:
            return False
        text = bytes(unicode_to_byte[c] for c in tokens[tok_id]).decode("latin-1")
        return all(ch in _CHAT_ALLOWED for ch in text)

    rng = _rng(20240601)
    head_dim = N_EMBD // N_HEAD

    # Dimension 0 of the residual stream is a constant 1.0 for every token and is
    # never written by attention/FFN (row 0 of attn_output/ffn_down is zero), so
    # after the final RMS norm it is a large positive number; a strongly negative
    # output weight in column 0 then buries a token's logit whatever the context.
    token_embd = _normal(rng, (n_vocab, N_EMBD), 0.3)
    token_embd[:, 0] = 1.0
    output = _normal(rng, (n_vocab, N_EMBD), 1.0)
    output[:, 0] = 0.0
    for tok_id in range(n_vocab):
        if not printable(tok_id):
            output[tok_id, 0] = -30.0

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("dynllm-tiny-chat")
    w.add_context_length(4096)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_eot_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    w.add_tensor("token_embd.weight", token_embd)
    for il in range(N_LAYER):
        p = f"blk.{il}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(p + "attn_q.weight", _normal(rng, (N_EMBD, N_EMBD), 0.2))
        w.add_tensor(p + "attn_k.weight", _normal(rng, (N_EMBD, N_EMBD), 0.2))
        w.add_tensor(p + "attn_v.weight", _normal(rng, (N_EMBD, N_EMBD), 0.2))
        wo = _normal(rng, (N_EMBD, N_EMBD), 0.05)
        wo[0, :] = 0.0
        w.add_tensor(p + "attn_output.weight", wo)
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, np.float32))
        w.add_tensor(p + "ffn_gate.weight", _normal(rng, (N_FF, N_EMBD), 0.2))
        w.add_tensor(p + "ffn_up.weight", _normal(rng, (N_FF, N_EMBD), 0.2))
        down = _normal(rng, (N_EMBD, N_FF), 0.05)
        down[0, :] = 0.0
        w.add_tensor(p + "ffn_down.weight", down)
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, np.float32))
    w.add_tensor("output.weight", output)
    _write(w)
    return path


# ----------------------------------------------------------------------------- bert


_WP_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WP_WORDS = [
    "the",
    "a",
    "an",
    "is",
    "of",
    "and",
    "to",
    "in",
    "it",
    "hello",
    "world",
    "cat",
    "dog",
    "paris",
    "france",
    "capital",
    "city",
    "what",
    "which",
    "where",
]
_WP_PUNCT = list(".,!?;:'\"()-")
_WP_SUFFIXES = ["s", "ed", "ing", "er", "ly"]


def _wordpiece_vocab() -> tuple[list[str], list[int]]:
    """WordPiece vocab as llama.cpp wants it: word-start pieces carry the U+2581
    prefix (the converter's rewrite of pieces without ``##``), continuation pieces
    are bare (the converter strips ``##``)."""
    tokens = list(_WP_SPECIALS)
    start = ["\u2581" + w for w in _WP_WORDS]
    start += ["\u2581" + c for c in string.ascii_lowercase + string.digits]
    start += ["\u2581" + p for p in _WP_PUNCT]
    cont = list(string.ascii_lowercase + string.digits) + _WP_SUFFIXES
    for tok in start + cont:  # skip repeats ("a" is both a word and a letter)
        if tok not in tokens:
            tokens.append(tok)
    _check_unique(tokens)
    types = [gguf.TokenType.CONTROL] * len(_WP_SPECIALS) + [gguf.TokenType.NORMAL] * (
        len(tokens) - len(_WP_SPECIALS)
    )
    types[_WP_SPECIALS.index("[UNK]")] = gguf.TokenType.UNKNOWN
    return tokens, types


def _write_bert(path: str | Path, *, rerank: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, types = _wordpiece_vocab()
    n_vocab = len(tokens)
    n_ctx = 512
    rng = _rng(20240602 if rerank else 20240603)

    w = gguf.GGUFWriter(str(path), "bert")
    w.add_name("dynllm-tiny-reranker" if rerank else "dynllm-tiny-embedding")
    w.add_context_length(n_ctx)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_layer_norm_eps(1e-12)
    w.add_causal_attention(False)
    w.add_pooling_type(gguf.PoolingType.RANK if rerank else gguf.PoolingType.MEAN)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    w.add_tokenizer_model("bert")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_type_count(2)
    w.add_unk_token_id(tokens.index("[UNK]"))
    w.add_bos_token_id(tokens.index("[CLS]"))  # llama.cpp uses BOS as [CLS]
    w.add_sep_token_id(tokens.index("[SEP]"))
    w.add_pad_token_id(tokens.index("[PAD]"))
    w.add_mask_token_id(tokens.index("[MASK]"))
    w.add_add_bos_token(True)
    w.add_add_sep_token(True)
    if rerank:
        w.add_classifier_output_labels(["score"])

    ones = np.ones(N_EMBD, np.float32)
    zeros = np.zeros(N_EMBD, np.float32)
    w.add_tensor("token_embd.weight", _normal(rng, (n_vocab, N_EMBD), 0.5))
    w.add_tensor("token_types.weight", _normal(rng, (2, N_EMBD), 0.1))
    w.add_tensor("position_embd.weight", _normal(rng, (n_ctx, N_EMBD), 0.1))
    w.add_tensor("token_embd_norm.weight", ones)
    w.add_tensor("token_embd_norm.bias", zeros)
    for il in range(N_LAYER):
        p = f"blk.{il}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + name + ".weight", _normal(rng, (N_EMBD, N_EMBD), 0.15))
            w.add_tensor(p + name + ".bias", _normal(rng, (N_EMBD,), 0.02))
        w.add_tensor(p + "attn_output_norm.weight", ones)
        w.add_tensor(p + "attn_output_norm.bias", zeros)
        w.add_tensor(p + "ffn_up.weight", _normal(rng, (N_FF, N_EMBD), 0.15))
        w.add_tensor(p + "ffn_up.bias", _normal(rng, (N_FF,), 0.02))
        w.add_tensor(p + "ffn_down.weight", _normal(rng, (N_EMBD, N_FF), 0.15))
        w.add_tensor(p + "ffn_down.bias", _normal(rng, (N_EMBD,), 0.02))
        w.add_tensor(p + "layer_output_norm.weight", ones)
        w.add_tensor(p + "layer_output_norm.bias", zeros)
    if rerank:
        w.add_tensor("cls.weight", _normal(rng, (N_EMBD, N_EMBD), 0.15))
        w.add_tensor("cls.bias", _normal(rng, (N_EMBD,), 0.02))
        w.add_tensor("cls.output.weight", _normal(rng, (1, N_EMBD), 0.5))
        w.add_tensor("cls.output.bias", np.zeros(1, np.float32))
    _write(w)
    return path


def write_embedding_model(path: str | Path) -> Path:
    """Write the tiny ``bert`` embedding model (WordPiece, MEAN pooling) to ``path``."""
    return _write_bert(path, rerank=False)


def write_reranker_model(path: str | Path) -> Path:
    """Write the tiny ``bert`` reranker (RANK pooling, one-label cls head) to ``path``."""
    return _write_bert(path, rerank=True)


def write_all(outdir: str | Path) -> dict[str, Path]:
    """Write the three models into ``outdir``; returns ``{"chat"|"embedding"|"reranker": path}``."""
    outdir = Path(outdir)
    return {
        "chat": write_chat_model(outdir / CHAT_FILENAME),
        "embedding": write_embedding_model(outdir / EMBEDDING_FILENAME),
        "reranker": write_reranker_model(outdir / RERANKER_FILENAME),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m tests.support.tiny_gguf OUTDIR", file=sys.stderr)
        return 2
    for kind, p in write_all(argv[0]).items():
        print(f"{kind}\t{p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
