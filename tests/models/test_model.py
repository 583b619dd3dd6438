"""The CTC transformer: sizes, the loss contract of docs/CONTRACTS.md, padding, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fl_dp_asr.models import (
    abstract_params,
    count_params,
    get_model_config,
    init_params,
    make_loss_fn,
    predict_logits,
)
from fl_dp_asr.models.encoder import cape_positions
from fl_dp_asr.text import CharTokenizer

# Small enough to compile in a few seconds on 2 CPU cores.
CONFIG = get_model_config(
    "tiny", num_blocks=2, model_dim=64, mlp_dim=128, conv_channels=128, layer_drop_rate=0.2
)


def make_batch(texts, lengths, max_samples=12_000, max_label=24, seed=0):
    """A docs/CONTRACTS.md batch; empty texts with length 0 are padding utterances."""
    rng = np.random.default_rng(seed)
    tok = CharTokenizer()
    batch = {
        "audio": np.zeros((len(texts), max_samples), np.int16),
        "audio_lengths": np.asarray(lengths, np.int32),
        "labels": np.zeros((len(texts), max_label), np.int32),
        "label_lengths": np.zeros(len(texts), np.int32),
        "mask": np.asarray([float(n > 0) for n in lengths], np.float32),
    }
    for i, (text, n) in enumerate(zip(texts, lengths)):
        batch["audio"][i, :n] = rng.normal(size=n) * 3000
        ids = tok.encode(text)
        batch["labels"][i, : len(ids)] = ids
        batch["label_lengths"][i] = len(ids)
    return batch


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


@pytest.fixture(scope="module")
def train_value_and_grad():
    return jax.jit(jax.value_and_grad(make_loss_fn(CONFIG, train=True), has_aux=True))


def test_paper_size_has_255_8m_parameters_without_allocating():
    abstract = abstract_params(get_model_config("paper"))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert abs(count_params(abstract) - 255.8e6) / 255.8e6 < 0.01
    assert abstract["front_end"]["conv"]["kernel"].shape == (7, 80, 1536)
    assert len([k for k in abstract if k.startswith("block_")]) == 36
    assert "bias" not in abstract["block_00"]["mlp_in"]  # the paper's blocks have no biases
    assert {x.dtype for x in jax.tree.leaves(abstract)} == {jnp.dtype("float32")}
    assert count_params(abstract_params(get_model_config("tiny"))) < 2e6


def test_loss_is_mean_over_real_utterances_and_ignores_padding(params, train_value_and_grad):
    batch = make_batch(["hello world", "yes", ""], [12_000, 7_000, 0])
    key = jax.random.key(1)
    (loss, aux), grads = train_value_and_grad(params, batch, key)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert set(aux) >= {"num_utterances", "num_tokens", "loss_sum", "nll_sum", "num_infeasible"}
    assert all(v.shape == () and v.dtype == jnp.float32 for v in aux.values())
    assert float(aux["num_utterances"]) == 2 and float(aux["num_tokens"]) == 14
    assert float(aux["num_infeasible"]) == 0
    np.testing.assert_allclose(loss, aux["loss_sum"] / 2, rtol=1e-6)
    # Garbage in the padding utterance and in the padded samples changes nothing.
    noisy = {k: v.copy() for k, v in batch.items()}
    noisy["audio"][2] = 999
    noisy["audio"][1, 7_000:] = -999
    noisy["labels"][2, :5] = 3
    (loss2, _), grads2 = train_value_and_grad(params, noisy, key)
    assert float(loss2) == float(loss)
    assert all(
        bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads2))
    )
    assert float(optax.tree.norm(grads)) > 0


def test_empty_batch_gives_zero_loss_and_zero_gradients(params, train_value_and_grad):
    batch = make_batch(["", "", ""], [0, 0, 0])
    (loss, aux), grads = train_value_and_grad(params, batch, jax.random.key(2))
    assert float(loss) == 0.0 and float(aux["num_utterances"]) == 0.0
    assert all(bool((g == 0).all()) for g in jax.tree.leaves(grads))


def test_train_is_random_eval_is_deterministic(params, train_value_and_grad):
    batch = make_batch(["hello world", "yes", ""], [12_000, 7_000, 0])
    (a, _), _ = train_value_and_grad(params, batch, jax.random.key(3))
    (b, _), _ = train_value_and_grad(params, batch, jax.random.key(4))
    assert float(a) != float(b)
    evaluate = jax.jit(make_loss_fn(CONFIG, train=False))
    assert float(evaluate(params, batch, jax.random.key(3))[0]) == float(
        evaluate(params, batch, jax.random.key(4))[0]
    )


def test_vmap_over_clients_matches_per_client_calls(params, train_value_and_grad):
    """The federated round vmaps the loss gradient over clients, one key per client."""
    one = make_batch(["hello world", "yes", ""], [12_000, 7_000, 0], seed=1)
    two = make_batch(["abc", "", "x y z"], [5_000, 0, 12_000], seed=2)
    stacked = jax.tree.map(lambda a, b: np.stack([a, b]), one, two)
    keys = jax.random.split(jax.random.key(5), 2)
    value_and_grad = jax.value_and_grad(make_loss_fn(CONFIG, train=True), has_aux=True)
    (losses, aux), grads = jax.jit(jax.vmap(value_and_grad, in_axes=(None, 0, 0)))(
        params, stacked, keys
    )
    (loss, _), grad = train_value_and_grad(params, two, keys[1])
    assert aux["num_utterances"].tolist() == [2.0, 2.0]
    np.testing.assert_allclose(losses[1], loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grad)):
        np.testing.assert_allclose(a[1], b, rtol=2e-4, atol=2e-5)


def test_logits_do_not_depend_on_padding_length(params):
    batch = make_batch(["hello"], [10_000])
    short, short_pad = predict_logits(
        params, batch["audio"][:, :10_000], batch["audio_lengths"], CONFIG
    )
    long, long_pad = predict_logits(params, batch["audio"], batch["audio_lengths"], CONFIG)
    frames = int((1 - short_pad).sum())
    assert frames == int((1 - long_pad).sum()) == 21  # ⌈61 / 3⌉ frames of 30 ms
    np.testing.assert_allclose(short[0, :frames], long[0, :frames], atol=2e-5)


def test_bfloat16_compute_keeps_float32_params_and_loss(params):
    config16 = CONFIG.replace(dtype="bfloat16")
    batch = make_batch(["hello world", "yes", ""], [12_000, 7_000, 0])
    loss_fn = jax.jit(make_loss_fn(config16, train=False))
    loss16, _ = loss_fn(params, batch, jax.random.key(0))
    loss32, _ = jax.jit(make_loss_fn(CONFIG, train=False))(params, batch, jax.random.key(0))
    assert loss16.dtype == jnp.float32 and jnp.isfinite(loss16)
    np.testing.assert_allclose(loss16, loss32, rtol=0.05)
    assert {x.dtype for x in jax.tree.leaves(init_params(config16, jax.random.key(0)))} == {
        jnp.dtype("float32")
    }


def test_cape_positions_centred_in_seconds_and_augmented_within_bounds():
    paddings = jnp.asarray(np.arange(10)[None] >= np.array([[10], [4]]), jnp.float32)
    centred = cape_positions(paddings, 0.03, None, 30.0, 1.0, 1.1)
    np.testing.assert_allclose(centred[1, :4], [-0.045, -0.015, 0.015, 0.045], atol=1e-6)
    shifted = cape_positions(paddings, 0.03, jax.random.key(0), 30.0, 1.0, 1.1)
    offset = np.asarray(shifted - centred).mean(axis=1)
    assert (np.abs(offset) <= 30.0 * 1.1 + 0.1).all() and (np.abs(offset) > 0.01).all()


def test_config_json_round_trip_and_validation():
    config = get_model_config("small", spec_augment={"num_time_masks": 3})
    assert type(config).from_dict(config.to_dict()) == config
    assert hash(config) == hash(type(config).from_dict(config.to_dict()))
    with pytest.raises(ValueError, match="unknown model size"):
        get_model_config("huge")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        get_model_config("tiny", model_dim=100, num_heads=3)


def test_front_end_matmul_equals_the_strided_convolution():
    from jax import lax

    from fl_dp_asr.models.encoder import strided_conv1d_as_matmul

    x = jax.random.normal(jax.random.key(0), (2, 50, 80))
    kernel = jax.random.normal(jax.random.key(1), (7, 80, 32))
    expected = lax.conv_general_dilated(
        x, kernel, (3,), [(3, 3)], dimension_numbers=("NWC", "WIO", "NWC")
    )
    got = strided_conv1d_as_matmul(x, kernel, (3,), [(3, 3)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_evaluate_does_not_count_spurious_ctc_spaces_as_errors(monkeypatch):
    from fl_dp_asr.models import asr

    tokenizer = CharTokenizer()
    reference = tokenizer.encode("the cat sat")
    hypothesis = tokenizer.encode("  the  cat sat ")  # CTC word separators in runs
    ids = np.zeros((1, 32), np.int32)
    ids[0, : len(hypothesis)] = hypothesis
    labels = np.zeros((1, 16), np.int32)
    labels[0, : len(reference)] = reference
    monkeypatch.setattr(
        asr,
        "_eval_step",
        lambda params, batch, config: {
            "ids": ids,
            "lengths": np.array([len(hypothesis)]),
            "loss_sum": 0.0,
            "nll_sum": 0.0,
            "num_tokens": 1.0,
        },
    )
    batch = {
        "mask": np.ones(1, np.float32),
        "labels": labels,
        "label_lengths": np.array([len(reference)]),
    }
    result = asr.evaluate(None, CONFIG, [batch], max_examples=1)
    assert result["cer"] == 0.0 and result["wer"] == 0.0
    assert result["examples"] == [("the cat sat", "the cat sat")]
