import numpy as np
import pytest

from steerc.runtime import SteerBias


def test_highlight_down_weights_only_unselected_keys_of_chosen_layers_and_heads():
    s = SteerBias.highlight(num_layers=3, num_heads=2, length=5, keep=[1, 3], alpha=0.01, layers=[0, 2], heads=[1])
    log_alpha = np.log(0.01)
    np.testing.assert_allclose(s.bias[0, 1], [log_alpha, 0, log_alpha, 0, log_alpha], rtol=1e-6)
    assert not s.bias[1].any() and not s.bias[:, 0].any()


def test_for_keys_pads_later_positions_with_zero():
    s = SteerBias(np.full((2, 3, 4), -1.0, np.float32))
    out = s.for_keys(batch=2, total=6)
    assert out.shape == (2, 2, 3, 6)
    assert (out[..., :4] == -1).all() and (out[..., 4:] == 0).all()
    assert s.for_keys(batch=1, total=3).shape == (1, 2, 3, 3)


@pytest.mark.parametrize("bias", [np.zeros((2, 3)), np.full((1, 1, 2), -np.inf)])
def test_invalid_bias(bias):
    with pytest.raises(ValueError):
        SteerBias(bias)


def test_check_against_engine_geometry():
    with pytest.raises(ValueError, match="covers 2 layers x 3 heads"):
        SteerBias(np.zeros((2, 3, 4))).check(num_layers=30, num_heads=9, batch=1)
    with pytest.raises(ValueError, match="alpha"):
        SteerBias.highlight(1, 1, 3, [0], alpha=2.0)
