"""Conv nets, hand-written encoder/decoder pairs, and images that keep their shape."""

import dataclasses

import pytest
import torch
from torch import nn

from pyro_vae import VAE, ConfigError, ImageData, TrainConfig, evaluate, fit, load_run
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.data import load_dataset
from pyro_vae.errors import CheckpointError
from pyro_vae.evaluate import importance_sampled_log_likelihood
from pyro_vae.plots import image_grid, reconstructions_figure, samples_figure

# small conv nets, so that CPU tests take seconds
CONV = dict(arch="conv", conv_channels=(8, 16), hidden_sizes=(64,), latent_dim=4)


@pytest.mark.parametrize(
    "shape, likelihood",
    [
        pytest.param((1, 28, 28), "bernoulli", id="28x28 grey"),
        pytest.param((3, 32, 32), "gaussian", id="32x32 RGB gaussian"),
        pytest.param((1, 28, 20), "continuous-bernoulli", id="Frey 28x20"),
        pytest.param((3, 7, 9), "bernoulli", id="odd 7x9 RGB"),
    ],
)
def test_conv_nets_keep_the_image_shape(shape, likelihood):
    vae = VAE(image_shape=shape, likelihood=likelihood, arch="conv", conv_channels=(8, 16),
              hidden_sizes=(32,), latent_dim=5)  # fmt: skip
    x = torch.rand(6, *shape)
    loc, scale = vae.encode(x)
    assert loc.shape == scale.shape == (6, 5) and (scale > 0).all()
    params = vae.decoder(torch.zeros(3, 6, 5))  # a particle dimension in front
    assert len(params) == (2 if likelihood == "gaussian" else 1)
    assert all(p.shape == (3, 6, *shape) for p in params)
    assert vae.reconstruct(x).shape == (6, *shape)
    # one image, one event: log p(x|z) sums over channels and pixels
    assert vae.likelihood_distribution(loc).log_prob(x.round()).shape == (6,)


def test_conv_output_bias_starts_at_the_data_marginal():
    vae = VAE(image_shape=(3, 8, 8), arch="conv", conv_channels=(4,), hidden_sizes=(8,))
    marginal = torch.rand(3, 8, 8) * 0.8 + 0.1
    for p in vae.decoder.parameters():
        p.data.zero_()
    vae.init_output_bias(marginal)
    torch.testing.assert_close(vae.decode(torch.zeros(2, 20))[0], marginal)


def test_images_too_small_for_the_convolutions_are_refused():
    with pytest.raises(ConfigError, match="too small for 3 stride-2 convolutions"):
        VAE(image_shape=(1, 4, 4), arch="conv", conv_channels=(8, 8, 8))


@pytest.mark.numerics
def test_conv_vae_trains_on_mnist_and_resumes_bit_for_bit(tmp_path):
    data = load_dataset("mnist-sample")
    config = TrainConfig(dataset="mnist-sample", train_size=2048, batch_size=64, epochs=4,
                         learning_rate=3e-3, **CONV)  # fmt: skip
    result = fit(config, tmp_path / "run", data)
    assert result.test_images.shape[1:] == (1, 28, 28)
    untrained = fit(dataclasses.replace(config, epochs=1, learning_rate=1e-12), data=data)
    _, before = importance_sampled_log_likelihood(untrained.vae.model, untrained.vae.guide,
                                                  result.test_images, 5)  # fmt: skip
    _, after = importance_sampled_log_likelihood(result.vae.model, result.vae.guide,
                                                 result.test_images, 5)  # fmt: skip
    gain = after - before
    assert gain.mean() > max(10.0, 5 * gain.std() / len(gain) ** 0.5), gain.mean()
    # stopped after one epoch and resumed: the same network, bit for bit
    fit(dataclasses.replace(config, epochs=2), tmp_path / "halves", data)
    resumed = fit(config, tmp_path / "halves", data, resume=True)
    for a, b in zip(result.vae.parameters(), resumed.vae.parameters(), strict=True):
        assert torch.equal(a, b)
    loaded = load_run(tmp_path / "run")
    assert loaded.vae.arch == "conv" and loaded.image_shape == (28, 28)
    scores = evaluate(loaded.vae, result.test_images[:50], num_particles=10)
    assert scores.log_likelihood >= scores.test_elbo - 1e-9


class PixelCNNishEncoder(nn.Module):
    """A researcher's own encoder: a conv layer with batch norm, then a linear head."""

    def __init__(self, latent_dim: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4 * 28 * 28, 2 * latent_dim)
        self.calls_in_training_mode = 0

    def forward(self, x):
        self.calls_in_training_mode += int(self.training)
        loc, raw = self.head(self.features(x).flatten(1)).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-4


class TinyDecoder(nn.Module):
    def __init__(self, latent_dim: int = 3) -> None:
        super().__init__()
        self.net = nn.Linear(latent_dim, 28 * 28)

    def forward(self, z):
        return (self.net(z).reshape(*z.shape[:-1], 1, 28, 28),)


def custom_vae(**kwargs) -> VAE:
    return VAE(image_shape=(1, 28, 28), latent_dim=3, encoder=PixelCNNishEncoder(),
               decoder=TinyDecoder(), **kwargs)  # fmt: skip


def test_a_hand_written_pair_gets_training_run_folders_evaluation_and_pictures(tmp_path):
    config = TrainConfig(dataset="mnist-sample", train_size=512, batch_size=64, epochs=2,
                         latent_dim=3, arch="custom")  # fmt: skip
    vae = custom_vae()
    result = fit(config, tmp_path / "run", vae=vae)
    assert result.vae is vae and len(result.history) == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["networks"] == {
        "encoder": f"{__name__}.PixelCNNishEncoder",
        "decoder": f"{__name__}.TinyDecoder",
    }
    # without the networks a run of hand-written ones cannot be rebuilt: say how to load it
    with pytest.raises(CheckpointError, match="PixelCNNishEncoder.*load_run\\(RUN, vae="):
        load_run(tmp_path / "run")
    loaded = load_run(tmp_path / "run", vae=custom_vae())
    for a, b in zip(loaded.vae.parameters(), vae.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(loaded.vae.buffers(), vae.buffers(), strict=True):  # batch-norm statistics
        assert torch.equal(a, b)
    scores = evaluate(loaded.vae, result.test_images[:40], num_particles=10)
    assert scores.num_images == 40
    samples_figure(loaded.vae, (28, 28), num_samples=4)
    reconstructions_figure(result.test_images[:4], loaded.vae.reconstruct(result.test_images[:4]),
                           (28, 28))  # fmt: skip
    # and resuming it continues the same object's training
    more = fit(dataclasses.replace(config, epochs=3), tmp_path / "run", resume=True,
               vae=custom_vae())  # fmt: skip
    assert [row["epoch"] for row in more.history] == [1, 2, 3]


def test_batch_norm_is_in_eval_mode_when_scored_and_images_are_scored_alone():
    config = TrainConfig(dataset="mnist-sample", train_size=256, batch_size=64, epochs=1,
                         latent_dim=3, arch="custom")  # fmt: skip
    vae = custom_vae()
    encoder = vae.encoder
    result = fit(config, vae=vae)
    trained_steps = encoder.calls_in_training_mode
    assert trained_steps == 4  # one forward pass a training step; none while scoring
    stats = [b.clone() for b in vae.buffers()]
    images = result.test_images[:30]
    vae.train()  # as a user's script may leave it: evaluate must switch to eval mode itself
    evaluate(vae, images, num_particles=5)
    assert encoder.calls_in_training_mode == trained_steps
    assert all(torch.equal(a, b) for a, b in zip(stats, vae.buffers(), strict=True))
    assert vae.training  # and hand the caller's mode back
    vae.eval()
    alone = vae.encode(images[:1])[0]
    among_others = vae.encode(images)[0][:1]
    torch.testing.assert_close(alone, among_others)


def test_fit_with_a_batch_norm_encoder_in_training_mode_mixes_images():
    """The check above can fail: in training mode the same image's code depends on its batch."""
    vae = custom_vae()
    images = torch.bernoulli(torch.full((30, 1, 28, 28), 0.3))
    vae.train()
    assert not torch.allclose(vae.encoder(images[:2])[0][:1], vae.encoder(images)[0][:1])


@pytest.mark.parametrize(
    "encoder, decoder, message",
    [
        pytest.param(nn.Flatten(), TinyDecoder(), "must return \\(loc, scale\\)", id="one tensor"),
        pytest.param(
            PixelCNNishEncoder(latent_dim=5),
            TinyDecoder(),
            "each \\(B, 3\\)",
            id="wrong latent size",
        ),  # fmt: skip
        pytest.param(
            PixelCNNishEncoder(), nn.Linear(3, 784), "must return \\(logits,\\)", id="flat decoder"
        ),  # fmt: skip
        pytest.param(
            PixelCNNishEncoder(), nn.Linear(4, 784), "decoder fails on input", id="decoder breaks"
        ),  # fmt: skip
        pytest.param(PixelCNNishEncoder(), None, "both", id="no decoder"),
        pytest.param("encoder", TinyDecoder(), "torch.nn.Module", id="not a module"),
    ],
)
def test_a_pair_that_breaks_the_contract_is_refused_when_built(encoder, decoder, message):
    with pytest.raises(ConfigError, match=message):
        VAE(image_shape=(1, 28, 28), latent_dim=3, encoder=encoder, decoder=decoder)


def test_fit_refuses_a_custom_vae_that_does_not_match_its_config():
    config = TrainConfig(dataset="mnist-sample", train_size=256, latent_dim=4, arch="custom")
    with pytest.raises(ConfigError, match="latent_dim: config 4 != VAE 3"):
        fit(config, vae=custom_vae())
    with pytest.raises(ConfigError, match="pass it as fit\\(config, vae="):
        fit(config)
    with pytest.raises(ConfigError, match="arch 'custom'"):
        fit(dataclasses.replace(config, arch="mlp", latent_dim=3), vae=custom_vae())


def test_rgb_images_train_and_draw_in_colour():
    generator = torch.Generator().manual_seed(0)
    # colour blobs: each image one of three hues
    hues = torch.eye(3)[torch.randint(3, (300,), generator=generator)]  # (N, 3)
    images = (hues[:, :, None, None] * torch.rand(300, 1, 8, 8, generator=generator)).flatten(1)
    data = ImageData("blobs", images[:250], None, images[250:], None, (3, 8, 8), "test")
    config = TrainConfig(dataset="mnist-sample", likelihood="continuous-bernoulli", epochs=1,
                         batch_size=50, arch="conv", conv_channels=(4,), hidden_sizes=(16,),
                         latent_dim=2)  # fmt: skip
    result = fit(config, data=data)
    assert result.test_images.shape == (50, 3, 8, 8) and result.image_shape == (3, 8, 8)
    figure = image_grid(result.test_images[:9], result.image_shape)
    shown = figure.axes[0].get_images()[0].get_array()
    assert shown.shape[-1] == 3  # drawn as RGB, not as grey
    samples_figure(result.vae, result.image_shape, num_samples=4)


def test_the_cli_trains_evaluates_and_draws_a_conv_vae(tmp_path, capsys):
    from pyro_vae.cli import main

    run = tmp_path / "run"
    code = main(["train", "--dataset", "mnist-sample", "--arch", "conv", "--conv-channels", "8",
                 "16", "--hidden-sizes", "32", "--latent-dim", "2", "--epochs", "1",
                 "--train-size", "256", "--eval-particles", "5", "--eval-images", "20",
                 "--out", str(run), "--no-progress"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    config = TrainConfig.from_dict(load_checkpoint(run / "checkpoint.pt")["config"])
    assert config.arch == "conv" and config.conv_channels == (8, 16)
    for picture in ("samples", "reconstructions", "interpolation", "manifold", "latent_scatter"):
        assert (run / f"{picture}.png").stat().st_size > 0
    assert main(["evaluate", str(run), "-K", "5", "--num-images", "20"]) == 0
    assert main(["sample", str(run), "--num", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(run), "--num", "4", "--out", str(tmp_path / "r.png")]) == 0


def test_the_cli_says_in_one_line_how_to_load_a_run_of_hand_written_networks(tmp_path, capsys):
    from pyro_vae.cli import main

    config = TrainConfig(dataset="mnist-sample", train_size=128, batch_size=64, epochs=1,
                         latent_dim=3, arch="custom")  # fmt: skip
    fit(config, tmp_path / "run", vae=custom_vae())
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "-K", "3"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hand-written networks" in err and "load_run(RUN, vae=" in err


class _Float64Encoder(PixelCNNishEncoder):
    def forward(self, x):
        loc, scale = super().forward(x)
        return loc.double(), scale.double()


class _PairOnlyEncoder(PixelCNNishEncoder):  # passes the contract's batch of two, only it
    def forward(self, x):
        loc, scale = super().forward(x)
        return loc.reshape(2, -1)[:, :3], scale.reshape(2, -1)[:, :3]


class _InkShyEncoder(PixelCNNishEncoder):  # fine on the contract's blank images, not on digits
    def forward(self, x):
        if x.sum() > 0:
            raise RuntimeError("this encoder cannot take ink")
        return super().forward(x)


class _HalfDecoder(TinyDecoder):  # its float16 logits were reported as a divergence
    def forward(self, z):
        return tuple(t.half() for t in super().forward(z))


class _BatchNormDecoder(TinyDecoder):
    def __init__(self, latent_dim: int = 3) -> None:
        super().__init__(latent_dim)
        self.norm = nn.BatchNorm1d(latent_dim)

    def forward(self, z):
        flat = z.reshape(-1, z.shape[-1])
        return super().forward(self.norm(flat).reshape(z.shape))


@pytest.mark.parametrize(
    "encoder, decoder, train_size, message",
    [
        pytest.param(_Float64Encoder, TinyDecoder, 256,
                     "the encoder returns torch.float64 for torch.float32 images", id="float64"),
        pytest.param(_PairOnlyEncoder, TinyDecoder, 256,
                     "the encoder must give [(64, 3), (64, 3)] for a batch of 64 training images "
                     "(64, 1, 28, 28); it gave [(2, 3), (2, 3)]", id="batch of two"),
        pytest.param(_InkShyEncoder, TinyDecoder, 256,
                     "the encoder fails on a batch of 64 training images (64, 1, 28, 28): this "
                     "encoder cannot take ink", id="raises on real data"),
        pytest.param(PixelCNNishEncoder, _HalfDecoder, 256,
                     "the decoder returns torch.float16 for torch.float32 latents",
                     id="float16 decoder"),
        pytest.param(PixelCNNishEncoder, _BatchNormDecoder, 257,
                     "the decoder fails on the latents of a batch of 1 training images",
                     id="batch norm on a last batch of one"),
    ],
)  # fmt: skip
def test_hand_written_networks_are_checked_on_real_batches(encoder, decoder, train_size, message):
    """The contract check runs on two blank images; what breaks only on real batches (their
    size, their values, the last smaller batch in training mode) is found before training, in
    one line that names the network, instead of deep inside Pyro's trace."""
    config = TrainConfig(dataset="mnist-sample", train_size=train_size, batch_size=64, epochs=1,
                         latent_dim=3, arch="custom")  # fmt: skip
    vae = VAE(image_shape=(1, 28, 28), latent_dim=3, encoder=encoder(), decoder=decoder())
    before = [p.clone() for p in vae.parameters()] + [b.clone() for b in vae.buffers()]
    with pytest.raises(ConfigError) as info:
        fit(config, vae=vae)
    assert message in str(info.value) and "\n" not in str(info.value), info.value
    after = [*vae.parameters(), *vae.buffers()]  # the check ran on copies
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_a_hand_written_network_that_fails_mid_training_is_named():
    """An error inside a hand-written network on a later batch: a ConfigError naming it, whose
    cause is the network's own exception (its traceback kept for the author)."""

    class LateFailure(PixelCNNishEncoder):
        calls = 0

        def forward(self, x):
            LateFailure.calls += 1
            if LateFailure.calls == 5:
                raise IndexError("my bug")
            return super().forward(x)

    config = TrainConfig(dataset="mnist-sample", train_size=512, batch_size=64, epochs=1,
                         latent_dim=3, arch="custom")  # fmt: skip
    vae = VAE(image_shape=(1, 28, 28), latent_dim=3, encoder=LateFailure(), decoder=TinyDecoder())
    with pytest.raises(ConfigError, match="hand-written encoder .LateFailure. failed") as info:
        fit(config, vae=vae)
    assert "IndexError: my bug" in str(info.value)
    assert isinstance(info.value.__cause__, IndexError)


@pytest.mark.parametrize(
    "call, message",
    [
        pytest.param(lambda: evaluate(None, torch.zeros(2, 784)), "takes a pyro_vae.VAE",
                     id="evaluate None"),
        pytest.param(lambda: fit(TrainConfig(dataset="mnist-sample"), data="mnist"),
                     "data must be an ImageData", id="fit data by name"),
        pytest.param(lambda: VAE(data_dim=784, prior="vamp", prior_components=10**9),
                     "choose fewer prior components", id="vamp of 1e9 pseudo-inputs"),
    ],
)  # fmt: skip
def test_api_mistakes_are_config_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
