"""Networks: Probabilistic U-Net, region-aware implicit upsampler, Matting U-Net, the whole model."""

from scripts.networks.implicit_upsampler import RegionAwareImplicitUpsampler
from scripts.networks.matting_unet import InterpolateConvUpsampler, MattingUNet
from scripts.networks.medical_matting_net import PREDICTION_KEYS, CheckpointMismatchError, MedicalMattingNet
from scripts.networks.prob_unet import AxisAlignedGaussianNet, FComb, ProbabilisticUNet, UNetDecoder, UNetEncoder
from scripts.networks.uncertainty import binary_entropy_uncertainty

__all__ = [
    "PREDICTION_KEYS",
    "CheckpointMismatchError",
    "AxisAlignedGaussianNet",
    "FComb",
    "InterpolateConvUpsampler",
    "MattingUNet",
    "MedicalMattingNet",
    "ProbabilisticUNet",
    "RegionAwareImplicitUpsampler",
    "UNetDecoder",
    "UNetEncoder",
    "binary_entropy_uncertainty",
]
