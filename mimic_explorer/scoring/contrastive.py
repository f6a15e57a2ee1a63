"""The contrastive (CLIP) per-sample loss, the CLIP score and retrieval recall@k.

Why here: mimic scores of image-text pairs are directional derivatives of a per-pair loss, exactly as
for classification, so the loss plugs into the scorer as a ``PerSampleLoss`` (docs/ARCHITECTURE.md).
With u_i, t_i the L2-normalised image and text embeddings of pair i and s the logit scale, pair i's
loss inside a batch of B pairs is its symmetric InfoNCE term

    ℓ_i = ½ [ −log softmax_j(s u_i·t_j)_i − log softmax_j(s u_j·t_i)_i ]

(image→text cross-entropy of row i plus text→image cross-entropy of column i). It depends on every
pair of the batch (``couples_batch = True``). There is no closed-form output gradient per sample
(``output_grad`` returns None); the forward-mode path gives ⟨∇ℓ_i, v⟩ for all i in one pass whatever
the coupling, and the output layer's path (``scoring.output_layer``) serves a projection as the
mimic layer. A batch must hold at least two pairs (one has no negatives).

What a pair's score means (README paragraph). Under a loss that couples the batch, the mimic score
of pair i is computed from g_i = ∇θ ℓ_i(batch), the gradient over the mimic layer of pair i's *own*
InfoNCE term in the batch it was scored in, with the batch's other B − 1 pairs as its negatives:
proj_i = ⟨−g_i, v⟩ / ‖v‖ and cos_i = proj_i / ‖g_i‖, v = θ_ref − θ on the mimic layer (the last
linear projection of the image or of the text tower). g_i includes how ℓ_i moves with the negatives'
embeddings, but not pair i's part in the other pairs' terms ℓ_j (as a negative for them); the sum
Σ_i g_i is B times the gradient of CLIP's batch loss, so the scores split the batch's gradient step
exactly. A pair's score is therefore relative to its batch: the same pair scored among other
negatives gets a different (typically close) value, and scores are most comparable across a pool
when batches are large and drawn at random. Every run records, for each pair, the batch it was
scored in (training records carry the step; end-of-run and pool signals a ``batch`` number with the
batch size), so the numbers can be reproduced and compared within a batch. Scores are exact — equal,
to float64 precision, to a per-pair autograd loop on the same batch — on every path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _unpack(outputs) -> tuple[Tensor, Tensor, Tensor]:
    """(image embeddings, text embeddings, scale) from a ``DualOutput`` or any 3-sequence."""
    try:
        image, text, scale = outputs
    except (TypeError, ValueError):
        raise TypeError(
            "InfoNCELoss expects the outputs of a dual encoder: (image embeddings, text embeddings, logit scale)"
        ) from None
    if image.dim() != 2 or text.shape != image.shape:
        raise ValueError(
            f"image and text embeddings must both be (B, D), got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    return image, text, scale


def _pair_logits(image: Tensor, text: Tensor, scale: Tensor | float) -> Tensor:
    """(B, B) similarity logits s·u_i·t_j of L2-normalised embeddings (row i: image i against every text)."""
    return scale * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T


class InfoNCELoss:
    """Symmetric InfoNCE per pair (see the module docstring); a ``PerSampleLoss``.

    ``loss(outputs, targets)`` → (B,). ``outputs`` = ``(image, text, scale)`` as a dual encoder's
    forward returns them (un-normalised embeddings; the loss normalises). ``targets`` is None or
    ``torch.arange(B)``: pair i's caption is text i. Anything else is refused, because a slice of a
    larger batch (``arange(k, k+B)``) would silently score against the wrong negatives.
    """

    couples_batch = True

    def __call__(self, outputs, targets: Tensor | None = None) -> Tensor:
        image, text, scale = _unpack(outputs)
        batch = image.shape[0]
        if batch < 2:
            raise ValueError(
                f"InfoNCE needs at least 2 pairs in a batch (the other pairs are the negatives), got {batch}"
            )
        if targets is not None:
            expected = torch.arange(batch, device=targets.device)
            if targets.shape != (batch,) or not torch.equal(targets.to(torch.long), expected):
                raise ValueError(
                    "InfoNCE targets must be torch.arange(B) (pair i's caption is text i) or None; "
                    f"got {targets.tolist()[:6]}… — score a coupled loss on whole batches, never on slices"
                )
        logits = _pair_logits(image, text, scale)
        image_to_text = -torch.diagonal(F.log_softmax(logits, dim=1))
        text_to_image = -torch.diagonal(F.log_softmax(logits, dim=0))
        return 0.5 * (image_to_text + text_to_image)

    def output_grad(self, outputs, targets: Tensor | None = None) -> None:
        """None: each pair's loss depends on every output of the batch, so no per-sample closed form."""
        return None

    def linear_output_sqnorm(self, outputs, position: int, features: Tensor) -> Tensor | None:
        """‖g_i‖² over the weight of a bias-free Linear producing output ``position`` (0: image, 1:
        text embeddings) from ``features`` (B, D), in closed form (``projection_grad_sqnorms``); None
        for any other output."""
        if position not in (0, 1) or features.dim() != 2:
            return None
        image, text, scale = _unpack(outputs)
        return projection_grad_sqnorms(image, text, scale, features, "image" if position == 0 else "text")

    def predict(self, outputs) -> Tensor:
        """(B,) int64: 1 where pair i's image ranks its own caption first among the batch's texts
        (in-batch image→text top-1), else 0 — what a run records as a pair's ``pred``."""
        image, text, scale = _unpack(outputs)
        with torch.no_grad():
            best = _pair_logits(
                image.detach(), text.detach(), scale.detach() if isinstance(scale, Tensor) else scale
            ).argmax(1)
        return (best == torch.arange(len(best), device=best.device)).to(torch.long)


def projection_grad_sqnorms(image: Tensor, text: Tensor, scale: Tensor | float, features: Tensor, side: str) -> Tensor:
    """‖∂ℓ_i/∂W‖²_F for every pair i, W the bias-free projection that maps ``features`` (B, D) to the
    ``side`` ("image" or "text") embeddings — in O(B²(C + D) + B³), where rows of the loss's Jacobian
    cost O(B³C).

    Derivation (text side; ℓ_i is symmetric in the two sides, S ↔ Sᵀ, so the image side swaps them).
    With t_j = z_j / n_j, n_j = ‖z_j‖, S = s U Tᵀ, P / Q its row / column softmax:
    ∂ℓ_i/∂t_j = a_ij u_i + δ_ij e_i, a = ½s(P − I), e_i = ½s(Σ_k Q_ki u_k − u_i); through the
    normalisation ∂ℓ_i/∂z_j = c_ij u_i + w_ij t_j + δ_ij f_i with c_ij = a_ij / n_j,
    w_ij = −a_ij (u_i·t_j) / n_j, f_i = (e_i − t_i (t_i·e_i)) / n_i. So g_i = u_i α_iᵀ + Σ_j w_ij t_j h_jᵀ
    + f_i h_iᵀ (α_i = Σ_j c_ij h_j), whose squared norm expands into B×B Gram products.
    """
    if side not in ("image", "text"):
        raise ValueError(f"side must be 'image' or 'text', got {side!r}")
    if side == "image":
        image, text = text, image
    u = F.normalize(image, dim=-1)
    n = text.norm(dim=-1).clamp_min(torch.finfo(text.dtype).tiny)
    t = text / n[:, None]
    logits = scale * u @ t.T
    eye = torch.eye(len(u), dtype=u.dtype, device=u.device)
    a = 0.5 * scale * (torch.softmax(logits, dim=1) - eye)
    e = 0.5 * scale * (torch.softmax(logits, dim=0).T @ u - u)
    cosines = u @ t.T  # u_i·t_j
    c = a / n[None, :]
    w = -a * cosines / n[None, :]
    f = (e - t * (t * e).sum(-1, keepdim=True)) / n[:, None]
    h = features.to(u.dtype)
    gram = h @ h.T
    alpha = c @ h
    alpha_h = alpha @ h.T  # α_i·h_j
    return (
        alpha.pow(2).sum(-1)
        + ((w @ ((t @ t.T) * gram)) * w).sum(-1)
        + f.pow(2).sum(-1) * gram.diagonal()
        + 2 * (w * cosines * alpha_h).sum(-1)
        + 2 * (u * f).sum(-1) * alpha_h.diagonal()
        + 2 * (w * (f @ t.T) * gram).sum(-1)
    )


def clip_score(image: Tensor, text: Tensor) -> Tensor:
    """Cosine of each pair's two embeddings, (B,): DataComp's CLIP score (un-normalised inputs)."""
    return (F.normalize(image, dim=-1) * F.normalize(text, dim=-1)).sum(-1)


def _hits(similarity: Tensor, positives: Tensor, ks: Sequence[int]) -> dict[int, Tensor]:
    """Per query: is its best positive ranked within the top k (ties counted against it)."""
    best = torch.where(positives, similarity, torch.full_like(similarity, -torch.inf)).max(dim=1, keepdim=True).values
    rank = (similarity > best).sum(dim=1)
    return {k: rank < k for k in ks}


def retrieval_recall(
    image: Tensor,
    text: Tensor,
    image_of_text: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Image→text and text→image recall@k on a held-out set.

    ``image`` (N, D) and ``text`` (M, D) embeddings (un-normalised); ``image_of_text`` (M,) gives the
    image index each text describes (default: text j describes image j, M = N). Image→text recall@k:
    the fraction of images with at least one of their texts among the k most similar texts;
    text→image: the fraction of texts whose image is among the k most similar images. Keys
    ``"i2t@k"`` and ``"t2i@k"``.
    """
    image = F.normalize(image.detach().double(), dim=-1)
    text = F.normalize(text.detach().double(), dim=-1)
    if image_of_text is None:
        if len(image) != len(text):
            raise ValueError(f"{len(image)} images but {len(text)} texts: pass image_of_text")
        image_of_text = torch.arange(len(text))
    image_of_text = torch.as_tensor(image_of_text, dtype=torch.long)
    if image_of_text.shape != (len(text),) or image_of_text.min() < 0 or image_of_text.max() >= len(image):
        raise ValueError("image_of_text must give, for every text, an image index in 0..N-1")
    out: dict[str, float] = {}
    for direction, queries, keys, owner in (
        ("i2t", image, text, lambda rows: image_of_text.unsqueeze(0) == rows.unsqueeze(1)),
        ("t2i", text, image, lambda rows: torch.arange(len(image)).unsqueeze(0) == image_of_text[rows].unsqueeze(1)),
    ):
        hits = dict.fromkeys(ks, 0)
        for start in range(0, len(queries), chunk):
            rows = torch.arange(start, min(start + chunk, len(queries)))
            for k, hit in _hits(queries[rows] @ keys.T, owner(rows), ks).items():
                hits[k] += int(hit.sum())
        out.update({f"{direction}@{k}": hits[k] / len(queries) for k in ks})
    return out
