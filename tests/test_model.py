"""Our OCRNet-HRNet_W48 against the release-2.3 fixture."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def model():
    from converter.model import build_model
    return build_model()


def test_state_dict_names_shapes_and_order_equal_fixture(model, fixture_state):
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == fixture_state["entries"]
    assert len(ours) == fixture_state["totals"]["entries"] == 1583


def test_parameter_count(model, fixture_state):
    values = sum(int(np.prod(v.shape)) for v in model.state_dict().values())
    assert values == fixture_state["totals"]["values"] == 70466150
    trainable = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
    assert trainable == fixture_state["totals"]["trainable"]


@pytest.mark.slow   # W48's paddle.flops at 512x1024 (42 s); test_family counts W48 at 128x256
def test_flops_match_model_card(model, fixture_state):
    import paddle
    flops = paddle.flops(model, [1, 3, 512, 1024], print_detail=False)
    assert flops == fixture_state["paddle_flops"]["1x3x512x1024"] == 324658293504


def test_eval_forward_returns_main_logits_at_input_size(model):
    import paddle
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((1, 3, 64, 128), dtype=np.float32))
    model.eval()
    with paddle.no_grad():
        out = model(x)
    assert len(out) == 1 and out[0].shape == [1, 19, 64, 128]
    model.train()
    with paddle.no_grad():
        out_train = model(x)
    model.eval()
    assert len(out_train) == 2  # main and auxiliary logits in training
