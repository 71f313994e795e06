"""Detection and segmentation (issue 18): synthetic scenes, box utilities, evaluation, losses.

- ``scenes``: the scene generator (digits / CIFAR-10 objects on textured canvases, boxes, masks)
- ``boxes``: pairwise IoU, (dx, dy, log dw, log dh) encoding against anchors / grid cells, NMS under jit
- ``metrics``: mean IoU (segmentation), COCO-style box and mask mAP@0.5 and mAP@[.5:.95], precision-recall curves
- ``losses``: the YOLO composite loss on the S x S x (5B + C) output
- ``detectors``: a YOLO detector and a two-stage detector (RPN + RoI Align, optional mask head)
"""
from jaxnet.detection.scenes import Scenes, SceneSplits, instance_masks, load_scenes, make_scenes

__all__ = ["Scenes", "SceneSplits", "make_scenes", "load_scenes", "instance_masks"]
