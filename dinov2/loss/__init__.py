from .code_balance_loss import CodeBalanceLoss
from .code_contrastive_loss import CodeContrastiveLoss
from .dino_clstoken_loss import DINOLoss, normalized_entropy
from .hash_loss import HashQuantizationLoss
from .ibot_patch_loss import iBOTPatchLoss
from .koleo_loss import KoLeoLoss

__all__ = [
    "CodeBalanceLoss",
    "CodeContrastiveLoss", "DINOLoss", "HashQuantizationLoss", "KoLeoLoss", "iBOTPatchLoss", "normalized_entropy"]
