import copy

import pytest
import torch
import torch.nn.functional as F

from dinov2.models import vision_transformer as vits
from dinov2.train.ssl_meta_arch import NonFiniteLossError, SSLMetaArch
from dinov2.utils.config import ConfigError, merge_config

from ..conftest import synthetic_multicrop_batch

GLOBAL, LOCAL, PATCH = 28, 14, 7
N_LOCAL = 2


@pytest.fixture
def tiny_arch(monkeypatch):
    def vit_test(**kwargs):
        return vits.DinoVisionTransformer(embed_dim=32, depth=2, num_heads=2, **kwargs)

    monkeypatch.setattr(vits, "vit_test", vit_test, raising=False)


def tiny_cfg(*opts):
    return merge_config(
        None,
        [
            "student.arch=vit_test",
            f"student.patch_size={PATCH}",
            "student.drop_path_rate=0.0",
            f"crops.global_crops_size={GLOBAL}",
            f"crops.local_crops_size={LOCAL}",
            f"crops.local_crops_number={N_LOCAL}",
            "hash.hash_bit=16",
            "hash.patch_proj_dim=24",
            "dino.head_n_prototypes=64",
            "dino.head_hidden_dim=48",
            "dino.head_bottleneck_dim=16",
            "ibot.head_n_prototypes=32",
            "ibot.head_hidden_dim=48",
            "ibot.head_bottleneck_dim=16",
            "ibot.mask_sample_probability=1.0",
            *opts,
        ],
    )


def make_batch(batch_size=3, seed=0):
    return synthetic_multicrop_batch(GLOBAL, LOCAL, N_LOCAL, PATCH, batch_size, seed, torch.float32, (0.1, 0.6), 1.0)


def cross_entropy(teacher_probs, student_logits, temp=0.1):
    """Mean over rows of -sum p * log softmax(s / temp)."""
    return -(teacher_probs * F.log_softmax(student_logits / temp, dim=-1)).sum(-1).mean()


def test_teacher_is_a_frozen_copy_of_the_student(tiny_arch):
    model = SSLMetaArch(tiny_cfg())
    assert set(model.student.keys()) == {"backbone", "hash_head", "dino_head", "ibot_head"}
    s, t = model.student.state_dict(), model.teacher.state_dict()
    assert s.keys() == t.keys()
    assert all(torch.equal(s[k], t[k]) for k in s)
    assert not any(p.requires_grad for p in model.teacher.parameters())
    # The DINO head reads K-bit codes; the iBOT head reads the patch projections.
    assert model.student.dino_head.mlp[0].in_features == 16
    assert model.student.ibot_head.mlp[0].in_features == 24
    assert model.student.hash_head.pool_global.attention_net[2].out_features == (GLOBAL // PATCH) ** 2
    assert model.student.hash_head.pool_local.attention_net[2].out_features == (LOCAL // PATCH) ** 2


def test_forward_backward_matches_independent_loss_computation(tiny_arch):
    cfg = tiny_cfg("dino.koleo_loss_weight=0.1")
    model = SSLMetaArch(cfg)
    model.train()
    batch = make_batch()
    reference = copy.deepcopy(model)
    temp = 0.05
    losses = model.forward_backward(batch, teacher_temp=temp)

    # Independent computation with the same modules (centre is 0 at the first step).
    st, te = reference.student, reference.teacher
    g, loc, masks = batch["collated_global_crops"], batch["collated_local_crops"], batch["collated_masks"]
    with torch.no_grad():
        t_out = te.backbone.forward_features(g)
        t_hash = te.hash_head(t_out["x_norm_clstoken"], t_out["x_norm_patchtokens"], "global")
        t_logits = te.dino_head(t_hash["codes"])
        t_probs = F.softmax(t_logits / temp, dim=-1)
        t_a, t_b = t_probs.chunk(2)
        t_patch = te.ibot_head(t_hash["patch_proj"][masks])  # [M, P]
        t_patch_probs = F.softmax(t_patch / temp, dim=-1)
        s_g = st.backbone.forward_features(g, masks=masks)
        s_l = st.backbone.forward_features(loc)
        hg = st.hash_head(s_g["x_norm_clstoken"], s_g["x_norm_patchtokens"], "global")
        hl = st.hash_head(s_l["x_norm_clstoken"], s_l["x_norm_patchtokens"], "local")
        s_g_logits = st.dino_head(hg["codes"])
        s_l_logits = st.dino_head(hl["codes"])
    s_a, s_b = s_g_logits.chunk(2)
    n_terms = 2 * N_LOCAL + 2
    expected_global = (cross_entropy(t_b, s_a) + cross_entropy(t_a, s_b)) / n_terms
    expected_local = sum(cross_entropy(t, s) for s in s_l_logits.chunk(N_LOCAL) for t in (t_a, t_b)) / n_terms
    s_patch = st.ibot_head(hg["patch_proj"][masks])
    token_ce = -(t_patch_probs * F.log_softmax(s_patch / 0.1, dim=-1)).sum(-1)  # [M]
    per_image_weight = (1.0 / masks.sum(-1).float())[:, None].expand_as(masks)[masks]
    expected_ibot = (token_ce * per_image_weight).sum() / masks.shape[0]  # x 2 x 1/n_g = x 1
    expected_reg = (hg["codes"].abs() - 1).abs().mean()

    def koleo(x):
        x = F.normalize(x, dim=-1)
        d = torch.cdist(x, x) + torch.eye(len(x)) * 1e9
        return -torch.log(d.min(dim=1).values + 1e-8).mean()

    expected_koleo = sum(koleo(c) for c in hg["codes"].chunk(2))
    torch.testing.assert_close(losses["dino_global_crops_loss"], expected_global, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["dino_local_crops_loss"], expected_local, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["ibot_loss"], expected_ibot / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["hash_reg_loss"], expected_reg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["koleo_loss"], expected_koleo / 2, rtol=1e-4, atol=1e-5)
    expected_total = expected_global + expected_local + expected_ibot + 0.01 * expected_reg + 0.1 * expected_koleo
    torch.testing.assert_close(losses["total_loss"], expected_total, rtol=1e-5, atol=1e-6)


def test_contrastive_term_is_the_cross_view_infonce_of_the_student_codes(tiny_arch):
    # The same model and batch with and without the term: the totals differ by weight x the term.
    torch.manual_seed(0)
    with_term = SSLMetaArch(tiny_cfg("hash.loss_contrastive=0.5", "hash.contrastive_temp=0.3"))
    without = SSLMetaArch(tiny_cfg())
    without.load_state_dict(with_term.state_dict())
    with_term.train()
    without.train()
    batch = make_batch(batch_size=4)
    losses = with_term.forward_backward(batch, teacher_temp=0.04)
    plain = without.forward_backward(batch, teacher_temp=0.04)
    assert "contrastive_loss" not in plain

    st = without.student  # a forward pass without gradients leaves it as it was
    with torch.no_grad():
        out = st.backbone.forward_features(batch["collated_global_crops"], masks=batch["collated_masks"])
        codes = st.hash_head(out["x_norm_clstoken"], out["x_norm_patchtokens"], "global")["codes"]
    a, b = F.normalize(codes, dim=-1).chunk(2)
    logits = a @ b.t() / 0.3
    labels = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    torch.testing.assert_close(losses["contrastive_loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["total_loss"] - plain["total_loss"], 0.5 * expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["awp", "grid"])
def test_gradients_reach_every_student_parameter_and_no_teacher_parameter(tiny_arch, pooling):
    model = SSLMetaArch(tiny_cfg(f"hash.pooling={pooling}"))
    model.train()
    model.forward_backward(make_batch(), teacher_temp=0.04)
    no_grad = [n for n, p in model.student.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
    for n, p in model.student.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), n
    assert all(p.grad is None for p in model.teacher.parameters())


def test_switched_off_losses_are_absent(tiny_arch):
    model = SSLMetaArch(tiny_cfg("ibot.loss_weight=0", "hash.do_or_not=false", "crops.local_crops_number=0"))
    batch = make_batch()
    batch["collated_local_crops"] = batch["collated_local_crops"][:0]
    losses = model.forward_backward(batch, teacher_temp=0.04)
    assert set(losses) == {"dino_global_crops_loss", "dino_target_entropy", "total_loss"}
    assert 0.0 <= losses["dino_target_entropy"].item() <= 1.0


def test_update_teacher_is_the_ema_formula(tiny_arch):
    model = SSLMetaArch(tiny_cfg())
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student = model.student.state_dict()
    model.update_teacher(0.9)
    after = model.teacher.state_dict()
    for name, _ in model.teacher.named_parameters():
        torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * student[name])


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_arch):
    torch.manual_seed(0)
    model = SSLMetaArch(tiny_cfg("hash.loss_hash_reg=0.1"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.student.parameters() if p.requires_grad], lr=1e-3)
    batch = make_batch()
    losses = []
    for _ in range(8):
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(model.forward_backward(batch, teacher_temp=0.04)["total_loss"]))
        optimizer.step()
        model.update_teacher(0.996)
    assert losses[-1] < losses[0]


def test_param_groups_cover_each_trainable_student_parameter_once(tiny_arch):
    model = SSLMetaArch(tiny_cfg())
    groups = model.get_params_groups()
    grouped = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.student.parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable)
    last = [g for g in groups if g["is_last_layer"]]
    assert last and all(g["lr_multiplier"] == 1.0 for g in last)


def test_non_finite_loss_is_named_and_leaves_no_gradient(tiny_arch, monkeypatch):
    model = SSLMetaArch(tiny_cfg())
    monkeypatch.setattr(model.hash_reg_loss, "forward", lambda codes: codes.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match="hash_reg_loss"):
        model.forward_backward(make_batch(), teacher_temp=0.04)
    assert all(p.grad is None for p in model.student.parameters())


@pytest.mark.parametrize(
    "opt, named",
    [
        ("hash.hash_bit=0", "hash.hash_bit"),
        ("crops.local_crops_size=15", "crops.local_crops_size"),
        ("ibot.separate_head=false", "ibot.separate_head"),
        ("train.centering=bogus", "train.centering"),
    ],
)
def test_config_errors_name_the_key(tiny_arch, opt, named):
    with pytest.raises((ConfigError, ValueError), match=named.replace(".", r"\.")):
        model = SSLMetaArch(tiny_cfg(opt))
        model.forward_backward(make_batch(), teacher_temp=0.04)


def test_sinkhorn_knopp_centering_runs(tiny_arch):
    model = SSLMetaArch(tiny_cfg("train.centering=sinkhorn_knopp"))
    losses = model.forward_backward(make_batch(), teacher_temp=0.04)
    assert all(torch.isfinite(v) for v in losses.values())


def test_balance_term_is_off_by_default_and_weighted_when_on(tiny_arch):
    assert "balance_loss" not in SSLMetaArch(tiny_cfg()).train().forward_backward(make_batch(), teacher_temp=0.04)
    torch.manual_seed(0)
    model = SSLMetaArch(tiny_cfg("hash.loss_balance=0.5", "ibot.loss_weight=0", "dino.loss_weight=0", "hash.do_or_not=false"))
    model.train()
    losses = model.forward_backward(make_batch(), teacher_temp=0.04)
    assert losses["total_loss"] == pytest.approx(0.5 * losses["balance_loss"].item(), rel=1e-5)
    assert model.student.hash_head.hash_layer[-1].weight.grad.abs().sum() > 0
