"""The two uncertainty maps of the Prob. U-Net samples and the network option that picks one."""

import pytest
import torch

from scripts.networks import MedicalMattingNet
from scripts.networks.medical_matting_net import CheckpointMismatchError
from scripts.networks.uncertainty import binary_entropy_uncertainty, sample_std_uncertainty, uncertainty_map

TINY = dict(prob_filters=(4, 8), matting_filters=(4, 8, 8), latent_dim=2, norm="INSTANCE", sample_seed=0)


def test_sample_std_is_high_only_where_samples_disagree():
    agree_uncertain = torch.full((1, 4, 1, 1), 0.5)           # every sample says 0.5
    disagree = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 4, 1, 1)
    assert sample_std_uncertainty(agree_uncertain).item() == 0.0
    assert sample_std_uncertainty(disagree).item() == pytest.approx(1.0)
    # the entropy cannot tell the two apart: both have mean 0.5
    assert binary_entropy_uncertainty(agree_uncertain).item() == pytest.approx(1.0)
    assert binary_entropy_uncertainty(disagree).item() == pytest.approx(1.0)
    assert uncertainty_map(disagree, "sample_std").shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="uncertainty must be one of"):
        uncertainty_map(disagree, "variance")


@pytest.mark.parametrize("flips", ["none", "hv"])
def test_predict_returns_the_chosen_map_of_its_samples(flips):
    net = MedicalMattingNet(**TINY, uncertainty="sample_std", test_time_flips=flips).eval()
    with torch.no_grad():
        out = net.predict(torch.rand(2, 1, 24, 24))
    torch.testing.assert_close(out["uncertainty"], sample_std_uncertainty(out["sample_probs"]))
    scripted = torch.jit.script(net)
    assert scripted.predict(torch.rand(1, 1, 24, 24))["uncertainty"].shape == (1, 1, 24, 24)


def test_the_map_is_part_of_the_architecture_and_old_checkpoints_mean_entropy():
    std_net = MedicalMattingNet(**TINY, uncertainty="sample_std")
    with pytest.raises(CheckpointMismatchError, match="uncertainty='sample_std'"):
        MedicalMattingNet(**TINY).load_state_dict(std_net.state_dict())
    # a checkpoint saved before the option existed has no "uncertainty" key: it was trained with the entropy
    state = MedicalMattingNet(**TINY).state_dict()
    del state["_extra_state"]["config"]["uncertainty"]
    MedicalMattingNet(**TINY).load_state_dict(state)
    with pytest.raises(CheckpointMismatchError, match="uncertainty"):
        MedicalMattingNet(**TINY, uncertainty="sample_std").load_state_dict(state)
    with pytest.raises(ValueError, match="uncertainty must be one of"):
        MedicalMattingNet(**TINY, uncertainty="variance")
