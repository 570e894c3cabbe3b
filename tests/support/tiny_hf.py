"""Tiny, deterministic Hugging Face model directories that ``transformers serve`` can serve.

Runs under the pinned ``transformers serve`` venv (it imports torch, transformers and
tokenizers, which the project's own env does not have), offline, in a few seconds::

    <venv>/bin/python tests/support/tiny_hf.py OUTDIR
    <venv>/bin/python -m tests.support.tiny_hf OUTDIR      # from the repo root

and prints one ``name<TAB>path`` line per model directory. :func:`write_all` is the API.

* ``OUTDIR/tiny-llama/``: a 2-layer ``LlamaForCausalLM`` (hidden 64, 4 heads, 2 KV heads,
  intermediate 128), float32 safetensors with seeded random weights, a byte-level BPE
  tokenizer trained here on a small built-in corpus (``<|endoftext|>``, ``<|im_start|>``,
  ``<|im_end|>`` specials) saved as a fast tokenizer, and a ChatML chat template. The
  output rows of the special tokens and of every token that does not decode to plain
  printable ASCII are zeroed and the others scaled up, so greedy text is plain ASCII and
  in practice never stops on EOS: always send ``max_tokens`` (``finish_reason`` is then
  ``"length"``). The generation config is greedy and ends on ``<|im_end|>`` /
  ``<|endoftext|>``.
* ``OUTDIR/tiny-whisper/``: a 2+2-layer ``WhisperForConditionalGeneration`` (d_model 64,
  4 heads, 80 mel bins) with a ``WhisperProcessor`` (feature extractor + a byte-level BPE
  Whisper tokenizer whose specials, ``<|endoftext|>`` ... ``<|notimestamps|>``, are the
  last ids, as Whisper's generate expects). Its output layer is steered like the chat
  model's and its generation config stops after 8 new tokens, so
  ``/v1/audio/transcriptions`` answers any audio with 8 plain-ASCII tokens of garbage
  (e.g. ``{"text": " tim tim tim tim tim tim tim tim"}``).

Each directory gets a marker file written last; a directory with its marker is left
alone, one without it is rebuilt from scratch. The weights and tokenizers are seeded, so
every build is identical.
"""

from __future__ import annotations

import json
import shutil
import string
import sys
from pathlib import Path

LLAMA_DIR = "tiny-llama"
WHISPER_DIR = "tiny-whisper"
MARKER_NAME = ".tiny-hf-complete"
# Bump to force a rebuild of existing directories when the recipe changes.
RECIPE_VERSION = "1"
SEED = 1234

HIDDEN = 64
HEADS = 4
KV_HEADS = 2
LAYERS = 2
INTERMEDIATE = 128
VOCAB_SIZE = 384

LLAMA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]
WHISPER_MAX_NEW_TOKENS = 8

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Characters the chat model may generate (the output rows of every other token are zeroed).
_ALLOWED = set(string.ascii_letters + string.digits + " .,!?-")

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! This is a tiny model used for testing a proxy server.",
    "A small language model writes short answers to simple questions.",
    "One, two, three, four, five, six, seven, eight, nine, ten.",
    "The server starts a backend process when the first request arrives.",
    "Tokens are counted and the answer stops when max tokens is reached.",
    "user: What is the capital of France? assistant: Paris is the capital.",
    "system: You are a helpful assistant. user: Say hello. assistant: Hello there!",
    "The weather is nice today, the sun is shining and the sky is blue.",
    "Numbers like 42, 1234 and 3.14 appear in text from time to time.",
    "She sells sea shells by the sea shore, and the shells she sells are sea shells.",
    "To be or not to be, that is the question.",
]


def _train_bpe(specials: list[str], vocab_size: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` trained on the built-in corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok


def _steer_output(weight, bpe, special_ids: set[int]) -> None:
    """Zero the output rows of special and non-plain-ASCII tokens, scale the others up.

    A zeroed row gives logit 0 while the best of the ~100 scaled rows is far above it, so
    greedy decoding only ever writes plain printable ASCII and never stops on EOS.
    """
    for token_id in range(weight.shape[0]):
        text = "" if token_id in special_ids else bpe.decode([token_id])
        if text and set(text) <= _ALLOWED:
            weight[token_id].mul_(20.0)
        else:
            weight[token_id].zero_()


def _done(path: Path) -> bool:
    marker = path / MARKER_NAME
    return marker.is_file() and marker.read_text().strip() == RECIPE_VERSION


def _fresh(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


def _mark(path: Path) -> None:
    (path / MARKER_NAME).write_text(RECIPE_VERSION + "\n")


def write_llama(path: Path) -> Path:
    """Write the tiny chat model into ``path`` (rebuilt unless its marker is there)."""
    path = Path(path)
    if _done(path):
        return path
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    _fresh(path)
    bpe = _train_bpe(LLAMA_SPECIALS, VOCAB_SIZE)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=512,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(path)

    ids = {t: bpe.token_to_id(t) for t in LLAMA_SPECIALS}
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=512,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        special_ids = {ids[t] for t in LLAMA_SPECIALS}
        _steer_output(model.lm_head.weight, bpe, special_ids)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
        do_sample=False,
        max_new_tokens=16,
    )
    model.save_pretrained(path, safe_serialization=True)
    _mark(path)
    return path


def write_whisper(path: Path) -> Path:
    """Write the tiny speech-to-text model into ``path`` (rebuilt unless its marker is there)."""
    path = Path(path)
    if _done(path):
        return path
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizerFast,
    )

    _fresh(path)
    # Whisper reads every id from `<|notimestamps|>` + 1 on as a timestamp: the text tokens
    # come first and the specials last, with `<|notimestamps|>` the very last id.
    bpe = _train_bpe([], VOCAB_SIZE - len(WHISPER_SPECIALS))
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = WhisperTokenizerFast(
        vocab=trained["vocab"],
        merges=[tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]],
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=448,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    feature_extractor = WhisperFeatureExtractor(feature_size=80)
    processor = WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)
    processor.save_pretrained(path)

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in WHISPER_SPECIALS}
    if ids["<|notimestamps|>"] != len(tokenizer) - 1:
        raise RuntimeError(f"unexpected Whisper special token ids: {ids} (vocab {len(tokenizer)})")
    eot = ids["<|endoftext|>"]
    sot = ids["<|startoftranscript|>"]
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=HIDDEN,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=INTERMEDIATE,
        decoder_ffn_dim=INTERMEDIATE,
        max_source_positions=1500,
        max_target_positions=64,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        # Untie the output layer from the embeddings, then keep it on plain-text tokens.
        model.proj_out.weight = torch.nn.Parameter(model.proj_out.weight.detach().clone())
        model.config.tie_word_embeddings = False
        _steer_output(model.proj_out.weight, bpe, set(ids.values()))
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        no_timestamps_token_id=ids["<|notimestamps|>"],
        is_multilingual=False,
        return_timestamps=False,
        forced_decoder_ids=None,
        begin_suppress_tokens=None,
        suppress_tokens=None,
        max_new_tokens=WHISPER_MAX_NEW_TOKENS,
        do_sample=False,
    )
    model.save_pretrained(path, safe_serialization=True)
    _mark(path)
    return path


def write_all(outdir: Path) -> dict[str, Path]:
    """Write every tiny model under ``outdir``; returns ``{dir name: path}``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    return {
        LLAMA_DIR: write_llama(outdir / LLAMA_DIR),
        WHISPER_DIR: write_whisper(outdir / WHISPER_DIR),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(f"usage: python {Path(__file__).name} OUTDIR", file=sys.stderr)
        return 2
    for name, path in write_all(Path(argv[0])).items():
        print(f"{name}\t{path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
