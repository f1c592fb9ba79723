"""SDSH student/teacher meta-architecture: the only place that turns the config into modules.

Student and teacher are ``nn.ModuleDict(backbone, hash_head, dino_head, ibot_head)``. The backbone is
DINOv2's ViT; the hash head pools the tokens of each crop group into continuous hash codes ``u``
(and projects patches for iBOT); the DINO head consumes the codes, so self-distillation acts on the
codes themselves; the iBOT head consumes the projected masked patches.
"""

import logging
from typing import Dict, List

import torch
from torch import nn

from dinov2 import distributed
from dinov2.checkpoint import load_pretrained_weights
from dinov2.fsdp import free_if_fsdp, get_fsdp_modules, get_fsdp_wrapper, is_fsdp
from dinov2.layers import DINOHead
from dinov2.loss import (
    CodeBalanceLoss,
    CodeContrastiveLoss,
    DINOLoss,
    HashQuantizationLoss,
    KoLeoLoss,
    iBOTPatchLoss,
    normalized_entropy,
)
from dinov2.models import build_model_from_cfg
from dinov2.models.hashing_network import build_hash_head
from dinov2.models.vision_transformer import BlockChunk
from dinov2.utils.config import ConfigError
from dinov2.utils.param_groups import fuse_params_groups, get_params_groups_with_decay

logger = logging.getLogger("dinov2")

N_GLOBAL_CROPS = 2


class NonFiniteLossError(FloatingPointError):
    """A loss term is NaN or infinite; ``term`` names it."""

    def __init__(self, term: str, value: float):
        super().__init__(f"loss term '{term}' is not finite ({value})")
        self.term = term
        self.value = value


class SSLMetaArch(nn.Module):
    """SDSH training model: student, EMA teacher and the SDSH losses (README, "The method in the code").

    Args:
        cfg: the merged configuration (``ssl_default_config.yaml`` layout).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        # Set by TrainingSetup for fp16 (GradScaler or ShardedGradScaler); None trains without scaling.
        self.fp16_scaler = None

        student_backbone, teacher_backbone, embed_dim = build_model_from_cfg(cfg)
        self.embed_dim = embed_dim
        self.patch_size = cfg.student.patch_size
        if cfg.student.pretrained_weights:
            # As in the reference, the public weights go into both backbones.
            load_pretrained_weights(student_backbone, cfg.student.pretrained_weights, None)
            load_pretrained_weights(teacher_backbone, cfg.student.pretrained_weights, None)

        self.hash_bit = cfg.hash.hash_bit
        self.patch_proj_dim = cfg.hash.patch_proj_dim
        self.dino_loss_weight = cfg.dino.loss_weight
        self.ibot_loss_weight = cfg.ibot.loss_weight
        self.do_dino = cfg.dino.loss_weight > 0
        self.do_koleo = cfg.dino.koleo_loss_weight > 0
        self.do_ibot = cfg.ibot.loss_weight > 0
        self.do_hash_reg = bool(cfg.hash.do_or_not) and cfg.hash.loss_hash_reg > 0
        self.do_contrastive = cfg.hash.loss_contrastive > 0
        self.do_balance = cfg.hash.loss_balance > 0

        student, teacher = {}, {}
        student["backbone"], teacher["backbone"] = student_backbone, teacher_backbone
        student["hash_head"] = build_hash_head(cfg, embed_dim)
        teacher["hash_head"] = build_hash_head(cfg, embed_dim)
        student["dino_head"] = self._make_head(cfg.dino, in_dim=self.hash_bit)
        teacher["dino_head"] = self._make_head(cfg.dino, in_dim=self.hash_bit)
        student["ibot_head"] = self._make_head(cfg.ibot, in_dim=self.patch_proj_dim)
        teacher["ibot_head"] = self._make_head(cfg.ibot, in_dim=self.patch_proj_dim)
        self.student = nn.ModuleDict(student)
        self.teacher = nn.ModuleDict(teacher)

        self.dino_loss = DINOLoss(cfg.dino.head_n_prototypes)
        self.ibot_patch_loss = iBOTPatchLoss(cfg.ibot.head_n_prototypes)
        self.koleo_loss = KoLeoLoss()
        self.hash_reg_loss = HashQuantizationLoss()
        self.code_contrastive_loss = CodeContrastiveLoss(cfg.hash.contrastive_temp)
        self.code_balance_loss = CodeBalanceLoss()

        # The teacher starts as an exact copy of the student and never receives gradients.
        for k in self.student.keys():
            self.teacher[k].load_state_dict(self.student[k].state_dict())
        for p in self.teacher.parameters():
            p.requires_grad = False
        logger.info(
            f"SDSH meta-architecture: {cfg.student.arch}/{self.patch_size}, {self.hash_bit}-bit codes, "
            f"pooling={cfg.hash.pooling}, losses: dino={self.do_dino} ibot={self.do_ibot} "
            f"koleo={self.do_koleo} hash_reg={self.do_hash_reg} contrastive={self.do_contrastive} "
            f"balance={self.do_balance}"
        )

    @staticmethod
    def _make_head(head_cfg, in_dim: int) -> DINOHead:
        return DINOHead(
            in_dim=in_dim,
            out_dim=head_cfg.head_n_prototypes,
            hidden_dim=head_cfg.head_hidden_dim,
            bottleneck_dim=head_cfg.head_bottleneck_dim,
            nlayers=head_cfg.head_nlayers,
        )

    def forward(self, inputs):
        raise NotImplementedError("SSLMetaArch is trained through forward_backward()")

    def train(self, mode: bool = True):
        super().train(mode)
        # The teacher never uses drop path or other training-time behaviour.
        self.teacher.eval()
        return self

    def backprop_loss(self, loss: torch.Tensor) -> None:
        if self.fp16_scaler is not None:
            self.fp16_scaler.scale(loss).backward()
        else:
            loss.backward()

    @torch.no_grad()
    def _teacher_targets(self, global_crops, mask_indices_list, n_masked_patches, upperbound, teacher_temp,
                         n_masked_patches_tensor):
        """Teacher probabilities for the DINO term [2, B, P] and for the masked patches [M, P]."""
        out = self.teacher.backbone(global_crops, is_training=True)
        hashed = self.teacher.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], view="global")
        codes_a, codes_b = hashed["codes"].chunk(N_GLOBAL_CROPS)
        # Swap A and B so that each student global crop is matched with the other teacher crop.
        teacher_dino_logits = self.teacher.dino_head(torch.cat((codes_b, codes_a)))  # [2B, P]

        ibot_logits = None
        if self.do_ibot:
            patch_proj = hashed["patch_proj"]  # [2B, N, 256]
            buffer = patch_proj.new_zeros(upperbound, patch_proj.shape[-1])
            buffer[:n_masked_patches] = torch.index_select(patch_proj.flatten(0, 1), 0, mask_indices_list)
            ibot_logits = self.teacher.ibot_head(buffer)[:n_masked_patches]  # [M, P]

        if self.cfg.train.centering == "centering":
            dino_targets = self.dino_loss.softmax_center_teacher(teacher_dino_logits, teacher_temp=teacher_temp)
            self.dino_loss.update_center(teacher_dino_logits)
            ibot_targets = None
            if ibot_logits is not None:
                ibot_targets = self.ibot_patch_loss.softmax_center_teacher(
                    ibot_logits.unsqueeze(0), teacher_temp=teacher_temp
                ).squeeze(0)
                self.ibot_patch_loss.update_center(ibot_logits.unsqueeze(0))
        else:  # sinkhorn_knopp (validate_config allows no other value)
            dino_targets = self.dino_loss.sinkhorn_knopp_teacher(teacher_dino_logits, teacher_temp=teacher_temp)
            ibot_targets = None
            if ibot_logits is not None:
                ibot_targets = self.ibot_patch_loss.sinkhorn_knopp_teacher(
                    ibot_logits, teacher_temp=teacher_temp, n_masked_patches_tensor=n_masked_patches_tensor
                )
        dino_targets = dino_targets.view(N_GLOBAL_CROPS, -1, dino_targets.shape[-1])
        return dino_targets, ibot_targets

    def forward_backward(self, images: Dict[str, torch.Tensor], teacher_temp: float) -> Dict[str, torch.Tensor]:
        """One training step's forward pass and backward pass (gradients accumulate in the student).

        Args:
            images: a batch from ``collate_data_and_cast`` (crops, masks and mask indices).
            teacher_temp: the teacher softmax temperature for this iteration.
        Returns:
            The loss terms (detached), including ``total_loss``.
        Raises:
            NonFiniteLossError: a loss term is NaN or infinite; no gradient has been computed.
        """
        device = next(self.student.parameters()).device
        n_local_crops = self.cfg.crops.local_crops_number
        global_crops = images["collated_global_crops"].to(device, non_blocking=True)
        local_crops = images["collated_local_crops"].to(device, non_blocking=True)
        masks = images["collated_masks"].to(device, non_blocking=True)
        mask_indices_list = images["mask_indices_list"].to(device, non_blocking=True)
        n_masked_patches_tensor = images["n_masked_patches"].to(device, non_blocking=True)
        masks_weight = images["masks_weight"].to(device, non_blocking=True)
        n_masked_patches = mask_indices_list.shape[0]
        upperbound = int(images["upperbound"])
        do_ibot = self.do_ibot and n_masked_patches > 0

        n_local_terms = max(n_local_crops * N_GLOBAL_CROPS, 0)
        n_global_terms = (N_GLOBAL_CROPS - 1) * N_GLOBAL_CROPS
        n_terms = n_local_terms + n_global_terms

        dino_targets, ibot_targets = self._teacher_targets(
            global_crops, mask_indices_list, n_masked_patches, upperbound, teacher_temp, n_masked_patches_tensor
        )
        free_if_fsdp(self.teacher.values())

        # Student: masked global crops and unmasked local crops, each group at its own resolution.
        if n_local_crops > 0:
            out_global, out_local = self.student.backbone([global_crops, local_crops], masks=[masks, None], is_training=True)
        else:
            out_global = self.student.backbone(global_crops, masks=masks, is_training=True)
            out_local = None
        hashed_global = self.student.hash_head(out_global["x_norm_clstoken"], out_global["x_norm_patchtokens"], "global")
        codes_global = hashed_global["codes"]  # [2B, K]
        if out_local is not None:
            hashed_local = self.student.hash_head(out_local["x_norm_clstoken"], out_local["x_norm_patchtokens"], "local")
            codes_all = torch.cat((codes_global, hashed_local["codes"]))
        else:
            codes_all = codes_global
        dino_logits = self.student.dino_head(codes_all)
        dino_global_logits = dino_logits[: codes_global.shape[0]]  # [2B, P]
        dino_local_logits = dino_logits[codes_global.shape[0] :]  # [nB, P]

        loss_dict = {}
        loss_terms = []
        if self.do_dino:
            # Not a loss: how uniform the teacher's DINO targets are (1 = uniform, the term then carries no signal).
            loss_dict["dino_target_entropy"] = normalized_entropy(dino_targets)
        if self.do_dino and n_local_crops > 0:
            dino_local = self.dino_loss(list(dino_local_logits.chunk(n_local_crops)), list(dino_targets)) / n_terms
            loss_dict["dino_local_crops_loss"] = dino_local
            loss_terms.append(self.dino_loss_weight * dino_local)
        if self.do_dino:
            # Both global crops in one term: the mean over 2B rows, times 2, sums the two A/B pairs.
            dino_global = self.dino_loss([dino_global_logits], [dino_targets.flatten(0, 1)]) * 2 / n_terms
            loss_dict["dino_global_crops_loss"] = dino_global
            loss_terms.append(self.dino_loss_weight * dino_global)
        if self.do_koleo:
            koleo = sum(self.koleo_loss(chunk) for chunk in codes_global.chunk(N_GLOBAL_CROPS))
            loss_dict["koleo_loss"] = koleo / N_GLOBAL_CROPS
            loss_terms.append(self.cfg.dino.koleo_loss_weight * koleo)
        if self.do_contrastive:
            # The two global crops of each image are the positive pair; the batch's other images the negatives.
            contrastive = self.code_contrastive_loss(*codes_global.chunk(N_GLOBAL_CROPS))
            loss_dict["contrastive_loss"] = contrastive
            loss_terms.append(self.cfg.hash.loss_contrastive * contrastive)
        if self.do_balance:
            balance = self.code_balance_loss(codes_global)
            loss_dict["balance_loss"] = balance
            loss_terms.append(self.cfg.hash.loss_balance * balance)
        if do_ibot:
            patch_proj = hashed_global["patch_proj"]  # [2B, N, 256]
            buffer = patch_proj.new_zeros(upperbound, patch_proj.shape[-1])
            buffer[:n_masked_patches] = torch.index_select(patch_proj.flatten(0, 1), 0, mask_indices_list)
            student_ibot_logits = self.student.ibot_head(buffer)[:n_masked_patches]
            ibot = self.ibot_patch_loss.forward_masked(
                student_ibot_logits,
                ibot_targets,
                student_masks_flat=masks,
                n_masked_patches=n_masked_patches,
                masks_weight=masks_weight,
            )
            ibot = ibot * 2 / N_GLOBAL_CROPS
            loss_dict["ibot_loss"] = ibot / 2
            loss_terms.append(self.ibot_loss_weight * ibot)
        if self.do_hash_reg:
            hash_reg = self.hash_reg_loss(codes_global)
            loss_dict["hash_reg_loss"] = hash_reg
            loss_terms.append(self.cfg.hash.loss_hash_reg * hash_reg)
        total = sum(loss_terms)
        loss_dict["total_loss"] = total

        self._check_finite(loss_dict)
        self.backprop_loss(total)
        return {k: v.detach() for k, v in loss_dict.items()}

    @staticmethod
    def _check_finite(loss_dict: Dict[str, torch.Tensor]) -> None:
        """Raise NonFiniteLossError before any backward pass if a loss term is NaN/inf on any rank.

        With several processes the ranks agree first (one all-reduce of a flag): a rank that
        stopped alone would leave the others waiting forever in the backward collectives.
        """
        bad = next(((k, v) for k, v in loss_dict.items() if not torch.isfinite(v.detach()).all()), None)
        if distributed.is_enabled():
            device = loss_dict["total_loss"].device
            flag = torch.tensor([0.0 if bad is None else 1.0], device=device)
            torch.distributed.all_reduce(flag)
            if bad is None and flag.item() > 0:
                raise NonFiniteLossError("(a loss term of another rank)", float("nan"))
        if bad is not None:
            raise NonFiniteLossError(bad[0], float(bad[1].detach().float().mean()))

    @torch.no_grad()
    def update_teacher(self, m: float) -> None:
        """EMA update: teacher = m * teacher + (1 - m) * student, for every parameter."""
        student_params: List[torch.Tensor] = []
        teacher_params: List[torch.Tensor] = []
        for k in self.student.keys():
            if is_fsdp(self.student[k]):
                for ms, mt in zip(get_fsdp_modules(self.student[k]), get_fsdp_modules(self.teacher[k])):
                    student_params += ms.params
                    teacher_params += mt.params
            else:
                s_named = dict(self.student[k].named_parameters())
                for name, tp in self.teacher[k].named_parameters():
                    student_params.append(s_named[name])
                    teacher_params.append(tp)
        torch._foreach_mul_(teacher_params, m)
        torch._foreach_add_(teacher_params, student_params, alpha=1 - m)

    def get_params_groups(self) -> List[Dict]:
        """Fused optimizer parameter groups of every student sub-module."""
        groups = []
        for module in self.student.values():
            groups += get_params_groups_with_decay(
                module,
                lr_decay_rate=self.cfg.optim.layerwise_decay,
                patch_embed_lr_mult=self.cfg.optim.patch_embed_lr_mult,
            )
        return fuse_params_groups(groups)

    def prepare_for_distributed_training(self) -> None:
        """Wrap each student and teacher sub-module in FSDP (needs an initialised process group)."""
        precision = self.cfg.compute_precision
        for k in self.student.keys():
            student_dtype = precision.student[k].mixed_precision.param_dtype
            teacher_dtype = precision.teacher[k].mixed_precision.param_dtype
            if student_dtype != teacher_dtype:
                # FSDP pads flat parameters to 16 bytes of the compute dtype: the EMA could not pair them.
                raise ConfigError(
                    f"compute_precision.student.{k}.mixed_precision.param_dtype={student_dtype} differs from "
                    f"compute_precision.teacher.{k}.mixed_precision.param_dtype={teacher_dtype}: with FSDP the "
                    "teacher is the EMA of the student unit by unit and needs the same param_dtype"
                )
        logger.info("wrapping student and teacher sub-modules in FSDP")
        block_classes = set()
        if self.cfg.student.block_chunks > 0:
            block_classes.add(BlockChunk)
        # FSDP units live on the modules' device (a GPU in training; the CPU in the gloo tests).
        device = next(self.student.parameters()).device
        for k in list(self.student.keys()):
            self.teacher[k].load_state_dict(self.student[k].state_dict())
            wrap_student = get_fsdp_wrapper(precision.student[k], modules_to_wrap=block_classes, device_id=device)
            wrap_teacher = get_fsdp_wrapper(precision.teacher[k], modules_to_wrap=block_classes, device_id=device)
            self.student[k] = wrap_student(self.student[k])
            self.teacher[k] = wrap_teacher(self.teacher[k])
            for p in self.teacher[k].parameters():
                p.requires_grad = False

