"""Derived networks (CIFAR and ImageNet variants), registered in timm on import.

    import ilnas.nets, timm
    model = timm.create_model("ilnas_cifar", genotype="models/genotype.json", num_classes=10)
"""

from __future__ import annotations

from ilnas.nets.networks import AuxiliaryHead, Cell, NetworkCIFAR, NetworkImageNet, ilnas_cifar, ilnas_imagenet
from ilnas.nets.profile import count_macs, count_params

__all__ = [
    "AuxiliaryHead",
    "Cell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "count_macs",
    "count_params",
    "ilnas_cifar",
    "ilnas_imagenet",
]
