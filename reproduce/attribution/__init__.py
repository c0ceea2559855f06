"""Attribution and filter impulse response (issue 16, items 2-4): what the models look at.

The MedMNIST paper explains its gains by "a more robust feature extraction by the steerable
kernels ..., indicated by a higher magnitude filter impulse response (FIR) and an improved
co-location of the FIR with the input features used for prediction" (its Figure 2: Guided
Backprop / Grad-CAM of the final model layer). This package computes those quantities for one
trained model; the DVC stage that runs it per study cell, keeps models and draws report panels
lives elsewhere and calls only the API below.

Pipeline for one model (pure functions; the stage does the I/O)::

    idx = select_per_class(test_labels, per_class=4, seed=0)            # selection.py
    att = attribute(model.eval(), images[idx], test_labels[idx])         # attribute.py -> Attributions
    masks = embedded_object_masks("test", images=raw_test_images)[idx]  # objects.py, embedded data only
    per_image, means = score(att, masks=masks)                           # attribute.py / colocation.py
    fir = filter_norms(model)                                            # response.py: layer -> [C_out]

``att.arrays()`` holds, per image, ``gradcam`` [N, H, W], ``guided`` and ``guided_gradcam``
[N, C, H, W], ``response`` [N, H, W], ``targets`` and ``predictions``: save it with ``np.savez``.
``means`` is a flat name -> float dict (JSON-ready), ``per_image`` the same names -> [N].

Definitions (see each module for the details and reasons):

* Final layer (``layers.final_feature_layer``): the last spatial map the head reads: the
  conventional ResNet-9's ``scale_norm2`` output, the equivariant model's group-pooled
  ``invariant`` map (one invariant scalar per field and pixel, so maps rotate with the input).
* Grad-CAM (``gradcam.grad_cam``): captum's ``LayerGradCam`` on that layer with ReLU, upsampled
  bilinearly to the input.
* Guided backprop (``guided.guided_backprop``): the gradient w.r.t. every non-linearity's input
  is clamped to be non-negative (captum's rule for ReLU), extended explicitly to Mish, to
  FourierELU (at the ELU on the sampled rotations) and to InducedGate (at the gate scalars).
  Guided Grad-CAM is their product.
* FIR (``response``): a filter's impulse response is its kernel; its magnitude is the L2 norm of
  each output channel's expanded kernel, per layer. Per image, the response map is the
  channel-wise L2 norm of the final layer's map, upsampled.
* Co-location (``colocation``), per image, then the mean over the selection: Spearman rank
  correlation and top-10% overlap between the response map and each attribution's per-pixel
  magnitude (max |.| over colour channels); on the embedded data also each map's share of
  magnitude inside the object's coverage, with the object's area share as chance level.

Ground truth in tests/attribution/: Grad-CAM against a hand computation, the guided rule on a ReLU
model against captum's ``GuidedBackprop`` and by hand for Mish, InducedGate and FourierELU, exact
90-degree rotation consistency of all four maps for C4, C8, D4 (and flips), O(2) and SO(2) models
to float32 rounding of escnn's sampled bases (relative gap ~1e-6, tolerance 1e-4), its clear
failure for the conventional model and for a frame-dependent guided clamp, hand-valued scores, and
masks that sit on the stained cell.

For the stage: ``attribute`` needs the plain model (unwrap an opacus ``GradSampleModule`` with
``._module``) or an explicit ``layer=``; it leaves parameters' ``.grad`` and the model's hooks as
they were. The object masks cover the embedded data only; other datasets get no ``object_share``.
"""

from reproduce.attribution.attribute import TARGETS, Attributions, attribute, score
from reproduce.attribution.colocation import (
    colocation_scores,
    object_share,
    pixel_saliency,
    rank_correlation,
    summarise,
    top_k_overlap,
)
from reproduce.attribution.gradcam import grad_cam
from reproduce.attribution.guided import GUIDED_RULES, guided_backprop, guided_grad_cam, register_guided_rule
from reproduce.attribution.layers import final_feature_layer
from reproduce.attribution.objects import embedded_object_masks
from reproduce.attribution.response import filter_norms, response_map
from reproduce.attribution.selection import select_per_class

__all__ = [
    "TARGETS",
    "Attributions",
    "attribute",
    "score",
    "colocation_scores",
    "object_share",
    "pixel_saliency",
    "rank_correlation",
    "summarise",
    "top_k_overlap",
    "grad_cam",
    "GUIDED_RULES",
    "guided_backprop",
    "guided_grad_cam",
    "register_guided_rule",
    "final_feature_layer",
    "embedded_object_masks",
    "filter_norms",
    "response_map",
    "select_per_class",
]
