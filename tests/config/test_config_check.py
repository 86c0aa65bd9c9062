"""Options torchreid would refuse only once the data, sampler or optimiser are built are refused on the merged config
(clip3dreid_plugin.config.check), as one line naming the option."""
from __future__ import annotations

import pytest

from clip3dreid_plugin.config import ConfigError, load_config
from clip3dreid_plugin.config.check import Accepted, check_config
from clip3dreid_plugin.registry import accepted_names
from clip3dreid_plugin.tools import train_net

TOY = "toy/resnet50_baseline_64x32"
# A hand-written table, so that the checks are tested apart from what this torchreid registers.
ACCEPTED = Accepted(image_datasets=("market1501", "ltcc", "prcc"), video_datasets=("mars", "ccvid"),
                    samplers=("RandomSampler", "RandomIdentitySampler", "RandomDomainSampler",
                              "RandomDatasetSampler", "SequentialSampler"),
                    optimizers=("adam", "sgd"), schedulers=("single_step", "multi_step", "cosine"))


def _check(*opts: str) -> None:
    check_config(load_config(TOY, list(opts)), ACCEPTED)


def _refused(*opts: str) -> str:
    with pytest.raises(ConfigError) as err:
        _check(*opts)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def test_the_toy_recipe_and_the_defaults_pass():
    _check()
    check_config(load_config(None, []), accepted_names())


def test_accepted_names_are_torchreids_after_register():
    import torchreid

    names = accepted_names()
    assert {"market1501", "ltcc", "prcc", "synthcc"} <= set(names.image_datasets) and "ccvid" in names.video_datasets
    assert set(names.samplers) == set(torchreid.data.sampler.AVAI_SAMPLERS)
    assert set(names.optimizers) == set(torchreid.optim.optimizer.AVAI_OPTIMS)
    assert set(names.schedulers) == set(torchreid.optim.lr_scheduler.AVAI_SCH)


def test_a_misspelt_dataset_names_the_option_and_the_near_name():
    msg = _refused("data.sources", "[ltccc]")
    assert msg.startswith("data.sources: unknown image dataset 'ltccc'; did you mean 'ltcc'?"), msg
    assert "market1501, prcc" in msg  # what it takes
    msg = _refused("data.targets", "[market1501, nothing_alike]")
    assert msg.startswith("data.targets: unknown image dataset 'nothing_alike'; it takes") and "mean" not in msg
    assert "data.sources is empty" in _refused("data.sources", "[]")


def test_datasets_are_looked_up_in_the_table_of_data_type():
    msg = _refused("data.type", "video", "data.sources", "[ccvid]", "data.targets", "[ltcc]")
    assert msg.startswith("data.targets: unknown video dataset 'ltcc'"), msg
    _check("data.type", "video", "data.sources", "[ccvid]", "data.targets", "[mars]")
    assert "data.type must be image or video" in _refused("data.type", "images")


def test_an_identity_sampler_needs_a_batch_of_whole_identities():
    opts = ("sampler.train_sampler", "RandomIdentitySampler", "sampler.num_instances", "4")
    msg = _refused(*opts, "train.batch_size", "3")
    assert msg.startswith("train.batch_size (3) must be a multiple of sampler.num_instances (4)"), msg
    assert "must be a multiple" in _refused(*opts, "train.batch_size", "10")
    _check(*opts, "train.batch_size", "12")
    _check("sampler.train_sampler", "RandomSampler", "sampler.num_instances", "4", "train.batch_size", "3")
    assert "sampler.num_instances must be a positive integer" in _refused(
        "sampler.train_sampler", "RandomIdentitySampler", "sampler.num_instances", "0")
    # an evaluation-only run draws no training batch
    _check(*opts, "train.batch_size", "3", "test.evaluate", "True")


def test_domain_and_dataset_samplers_split_the_batch_evenly():
    msg = _refused("sampler.train_sampler", "RandomDomainSampler", "sampler.num_cams", "3", "train.batch_size", "8")
    assert msg.startswith("train.batch_size (8) must be a multiple of sampler.num_cams (3)"), msg
    _check("sampler.train_sampler", "RandomDomainSampler", "sampler.num_cams", "0", "train.batch_size", "8")
    msg = _refused("sampler.train_sampler", "RandomDatasetSampler", "sampler.num_datasets", "3",
                   "train.batch_size", "8")
    assert "sampler.num_datasets (3)" in msg


def test_sampler_names():
    msg = _refused("sampler.train_sampler", "RandomIdentitySamper")
    assert msg.startswith("sampler.train_sampler: unknown sampler 'RandomIdentitySamper'; "
                          "did you mean 'RandomIdentitySampler'?"), msg
    _check("sampler.train_sampler_t", "Nope")  # read only with data.load_train_targets
    assert _refused("sampler.train_sampler_t", "Nope", "data.load_train_targets", "True").startswith(
        "sampler.train_sampler_t: unknown sampler 'Nope'")


def test_loss_optimiser_and_scheduler_names():
    assert _refused("loss.name", "softmx").startswith("loss.name: unknown loss 'softmx'; did you mean 'softmax'?")
    _check("loss.name", "triplet")
    assert _refused("train.optim", "adamm").startswith("train.optim: unknown optimiser 'adamm'; did you mean 'adam'?")
    _check("train.optim", "sgd")
    msg = _refused("train.lr_scheduler", "step")
    assert msg.startswith("train.lr_scheduler: unknown scheduler 'step'") and "cosine, multi_step, single_step" in msg


def test_the_teacher_cache_stale_policy_is_checked_before_anything_runs():
    msg = _refused("teacher.on_stale", "rebuilt")
    assert msg.startswith("teacher.on_stale: unknown stale policy 'rebuilt'; did you mean 'rebuild'?"), msg
    assert "error, rebuild" in msg
    _check("teacher.on_stale", "error")


@pytest.mark.parametrize("key", ["data.height", "data.width", "train.batch_size", "test.batch_size"])
def test_sizes_must_be_positive(key):
    assert _refused(key, "0") == f"{key} must be a positive integer, got 0"
    assert _refused(key, "-3") == f"{key} must be a positive integer, got -3"


def test_the_train_command_refuses_a_batch_the_sampler_cannot_fill_in_one_line(tmp_path, capsys):
    rc = train_net.main(["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "o"),
                         "train.batch_size", "3", "sampler.num_instances", "4",
                         "sampler.train_sampler", "RandomIdentitySampler"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: train.batch_size (3) must be a multiple of sampler.num_instances (4)"), err
    assert not (tmp_path / "o").exists()  # refused before anything was written or built
