"""Knowledge-distillation losses for classifiers.

Prediction-layer losses (Hinton et al. 2015; Tang et al. 2019) work for every student. Intermediate
losses (TinyBERT: hidden states, attention maps, embedding output) need a transformer student that
reads the same token positions as the teacher; `check_intermediate` says what would work otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from bertserve.errors import BadInput

SOFT_LOSSES = ("kl", "mse")
SCHEDULES = ("constant", "anneal")


@dataclass
class LossConfig:
    alpha: float = 0.5               # weight of the soft-target loss; 1 - alpha goes to hard-label CE
    temperature: float = 4.0
    schedule: str = "constant"       # "anneal": linear from `temperature` down to 1 over training
    soft: str = "kl"                 # "mse": mean squared error on raw logits instead of KL
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    embedding_weight: float = 0.0
    layer_map: tuple[int, ...] | None = None  # teacher layer (1-based) matched by student layer 1, 2, ...

    def __post_init__(self):
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise BadInput(f"alpha must lie in [0, 1], got {self.alpha}")
        if not float(self.temperature) > 0.0:
            raise BadInput(f"temperature must be > 0, got {self.temperature}")
        if self.schedule not in SCHEDULES:
            raise BadInput(f"temperature schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.soft not in SOFT_LOSSES:
            raise BadInput(f"soft loss must be one of {SOFT_LOSSES}, got {self.soft!r}")
        for name in ("hidden_weight", "attention_weight", "embedding_weight"):
            if getattr(self, name) < 0:
                raise BadInput(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.layer_map is not None:
            self.layer_map = tuple(int(i) for i in self.layer_map)

    @property
    def uses_intermediate(self) -> bool:
        return (self.hidden_weight + self.attention_weight + self.embedding_weight) > 0


def temperature_at(config: LossConfig, step: int, total_steps: int) -> float:
    if config.schedule == "constant" or total_steps <= 1:
        return float(config.temperature)
    frac = min(max(step / (total_steps - 1), 0.0), 1.0)
    return float(config.temperature) + (1.0 - float(config.temperature)) * frac


def soft_target_loss(student_logits, teacher_logits, temperature: float):
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    The T^2 factor keeps the gradient scale of the soft term independent of T (Hinton et al.)."""
    if temperature <= 0:
        raise BadInput(f"temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def logit_mse(student_logits, teacher_logits):
    return F.mse_loss(student_logits, teacher_logits)


def hard_label_loss(student_logits, labels):
    """Cross-entropy over the labelled rows (label -1 marks teacher-labelled transfer data)."""
    known = labels >= 0
    if not bool(known.any()):
        return student_logits.new_zeros(())
    return F.cross_entropy(student_logits[known], labels[known])


def prediction_loss(student_logits, teacher_logits, labels, config: LossConfig, temperature: float):
    if config.soft == "kl":
        soft = soft_target_loss(student_logits, teacher_logits, temperature)
    else:
        soft = logit_mse(student_logits, teacher_logits)
    if config.alpha == 1.0:
        return soft
    return config.alpha * soft + (1.0 - config.alpha) * hard_label_loss(student_logits, labels)


def default_layer_map(student_layers: int, teacher_layers: int) -> tuple[int, ...]:
    """Uniform map (TinyBERT's g(m) = m * N / M): 3 of 12 -> (4, 8, 12)."""
    return tuple(round((i + 1) * teacher_layers / student_layers) for i in range(student_layers))


def check_intermediate(config: LossConfig, teacher_config, student_config, student_kind: str) -> tuple[int, ...]:
    """Validate intermediate matching between two models; return the layer map to use.

    Raises ValueError saying what would work when the combination cannot be matched."""
    if not config.uses_intermediate:
        return ()
    if student_kind != "bert":
        raise BadInput(
            f"hidden/attention/embedding losses need a transformer student, but the student is {student_kind!r}. "
            "Use a spec such as 'bert:layers=3', or set --hidden-weight/--attention-weight/--embedding-weight "
            "to 0 and distill the logits only (--alpha, --temperature)")
    if teacher_config.vocab_size != student_config.vocab_size:
        raise BadInput(
            f"intermediate losses compare token positions, so teacher and student must share a tokenizer "
            f"(vocab {teacher_config.vocab_size} vs {student_config.vocab_size}); build the student from the teacher")
    t_layers, s_layers = teacher_config.num_hidden_layers, student_config.num_hidden_layers
    layer_map = config.layer_map or default_layer_map(s_layers, t_layers)
    if len(layer_map) != s_layers:
        raise BadInput(f"layer map {list(layer_map)} has {len(layer_map)} entries but the student has {s_layers} "
                         f"layers; give one teacher layer per student layer, e.g. {list(default_layer_map(s_layers, t_layers))}")
    bad = [i for i in layer_map if not 1 <= i <= t_layers]
    if bad:
        raise BadInput(f"layer map entries {bad} are outside the teacher's layers 1..{t_layers}")
    if config.attention_weight > 0 and teacher_config.num_attention_heads != student_config.num_attention_heads:
        raise BadInput(
            f"attention-score MSE compares maps head by head: the teacher has {teacher_config.num_attention_heads} "
            f"heads, the student {student_config.num_attention_heads}. Build the student with "
            f"heads={teacher_config.num_attention_heads}, or set --attention-weight 0 and keep the hidden-state loss "
            "(a learned projection bridges different widths)")
    return tuple(layer_map)


def _masked_mse(student, teacher, mask):
    """MSE over real tokens only; mask (B, L) of 0/1."""
    diff = (student - teacher) ** 2
    weights = mask.to(diff.dtype).unsqueeze(-1)
    return (diff * weights).sum() / (weights.sum() * diff.shape[-1]).clamp(min=1.0)


class IntermediateLoss(nn.Module):
    """TinyBERT-style matching: hidden states through `layer_map` (with a learned projection when the
    widths differ), attention maps, embedding output. Its projections are trained with the student and
    dropped when the student is saved."""

    def __init__(self, config: LossConfig, teacher_config, student_config, layer_map: tuple[int, ...]):
        super().__init__()
        self.config, self.layer_map = config, tuple(layer_map)
        s_width, t_width = student_config.hidden_size, teacher_config.hidden_size
        self.project_hidden = nn.Linear(s_width, t_width) if s_width != t_width else nn.Identity()
        self.project_embedding = nn.Linear(s_width, t_width) if s_width != t_width else nn.Identity()

    def teacher_layers(self) -> dict:
        """Which teacher outputs the loss reads: hidden_states indices (0 = embeddings) and attention layers."""
        hidden = set()
        if self.config.hidden_weight > 0:
            hidden.update(self.layer_map)
        if self.config.embedding_weight > 0:
            hidden.add(0)
        attention = set(self.layer_map) if self.config.attention_weight > 0 else set()
        return {"hidden": sorted(hidden), "attention": sorted(attention)}

    def forward(self, student_out, teacher_hidden: dict, teacher_attention: dict, attention_mask):
        """student_out: HF output with hidden_states/attentions; teacher_*: {teacher layer: tensor}."""
        cfg, total = self.config, 0.0
        if cfg.embedding_weight > 0:
            emb = self.project_embedding(student_out.hidden_states[0])
            total = total + cfg.embedding_weight * _masked_mse(emb, teacher_hidden[0], attention_mask)
        for s_layer, t_layer in enumerate(self.layer_map, 1):
            if cfg.hidden_weight > 0:
                hid = self.project_hidden(student_out.hidden_states[s_layer])
                total = total + cfg.hidden_weight * _masked_mse(hid, teacher_hidden[t_layer], attention_mask) / len(self.layer_map)
            if cfg.attention_weight > 0:
                # HF returns attention probabilities (softmax of the scores); compared over real query/key pairs.
                s_att, t_att = student_out.attentions[s_layer - 1], teacher_attention[t_layer]
                pair = (attention_mask[:, None, :, None] * attention_mask[:, None, None, :]).to(s_att.dtype)
                err = ((s_att - t_att) ** 2 * pair).sum() / (pair.sum() * s_att.shape[1]).clamp(min=1.0)
                total = total + cfg.attention_weight * err / len(self.layer_map)
        return total
