"""Per-sample early stopping (``minimise(tol=...)``, issue 12): converged samples move to their
next stage and, after the last, leave the batch; ``tol=None`` is the full schedule, bit for bit."""

import pytest
import torch

from preimage.cli import build_parser
from preimage.invert import invert
from preimage.objective import InversionObjective
from preimage.optim import CHECK_EVERY, EarlyStop, as_parameterisation, gaussian_init, make_stepper, minimise
from preimage.representations.base import Representation

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEDULE = [(200, 1.0), (200, 0.1)]
FAST, SLOW = 3e-2, 3e-4  # momentum rates: the first converges within its first stage, the second never


class Net(Representation):
    """A fixed random 5×5 convolution (stride 2) and ReLU on grey 32×32 images."""

    input_channels = (1,)

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.conv = torch.nn.Conv2d(1, 6, 5, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) / 5)
            self.conv.bias.zero_()

    def forward(self, x):
        return torch.relu(self.conv((x - 128) / 64))


def _images(n, seed=1):
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 255


def _objective(images, rep=None, lambda_tv=0.5):
    rep = rep or Net()
    with torch.no_grad():
        target = rep(images)
    return InversionObjective(rep, target, (1, 32, 32), lambda_alpha=1e3, lambda_tv=lambda_tv)


def _run(obj, u0, lr, schedule=SCHEDULE, **kw):
    return minimise(obj, u0, lr=lr, schedule=schedule, progress=False, **kw)


def test_tol_none_is_the_full_schedule_bit_for_bit():
    obj = _objective(_images(2))
    u0 = gaussian_init(2, (1, 32, 32))
    short = [(60, 1.0), (60, 0.1)]
    plain = _run(obj, u0, [FAST, SLOW], short)
    none = _run(obj, u0, [FAST, SLOW], short, tol=None)
    assert torch.equal(plain.u, none.u) and torch.equal(plain.history, none.history)
    assert plain.iterations_used.tolist() == [120, 120] and plain.final_stage.tolist() == [1, 1]
    # per-sample stages with a window that is never full end each stage where the schedule does:
    # the same arithmetic, so the same bits
    never = _run(obj, u0, [FAST, SLOW], short, tol=0.5, window=1000)
    assert torch.equal(never.u, plain.u) and torch.equal(never.history, plain.history)
    assert never.iterations_used.tolist() == [120, 120]


def test_converged_sample_stops_early_and_a_slow_one_keeps_going():
    obj = _objective(_images(2))
    u0 = gaussian_init(2, (1, 32, 32))
    full = _run(obj, u0, [FAST, SLOW])
    res = _run(obj, u0, [FAST, SLOW], tol=1e-3, window=10)
    fast, slow = res.iterations_used.tolist()
    assert fast < 200 and slow == 400  # the fast one ran both stages inside the first stage's span
    assert res.final_stage.tolist() == [1, 1]
    assert torch.equal(res.u[1], full.u[1])  # the slow one never converged: its full schedule
    assert res.energy["total"][0] == pytest.approx(full.energy["total"][0], rel=1e-3)
    # its energy is no longer recorded as it changes: the frozen sample reads its last value
    assert res.history[-1, 0] == res.history[-2, 0]


@pytest.mark.parametrize("method,lrs", [("momentum", (FAST, SLOW, 1e-2)), ("adam", (3e-2, 3e-2, 3e-2)),
                                        ("lbfgs", (1.0, 1.0, 1.0))])
def test_a_sample_does_not_depend_on_the_rest_of_its_batch(method, lrs):
    images = _images(3)
    rep = Net()
    u0 = gaussian_init(3, (1, 32, 32))
    kw = dict(method=method, tol=1e-3, window=10, schedule=[(100, 1.0), (100, 0.1)])
    pair = _run(_objective(images[:2], rep), u0[:2], list(lrs[:2]) if method == "momentum" else lrs[0], **kw)
    alone = _run(_objective(images[:1], rep), u0[:1], lrs[0], **kw)
    other = torch.stack([images[0], images[2]])
    mixed = _run(_objective(other, rep), u0[[0, 2]], [lrs[0], lrs[2]] if method == "momentum" else lrs[0], **kw)
    for res in (alone, mixed):
        assert res.iterations_used[0] == pair.iterations_used[0]
        assert torch.allclose(res.u[0], pair.u[0], atol=1e-6, rtol=1e-5)
    assert pair.iterations_used[0] < 200


def test_stages_advance_per_sample():
    """Synthetic energies: a flat one converges at the first full window of each stage, a
    falling one uses up each stage; both finish after the last."""
    stop = EarlyStop([(30, 1.0), (0, 0.5), (30, 0.1)], n=2, tol=1e-3, window=4)
    moves = []
    for k in range(60):
        stop.observe(k, torch.tensor([1.0, 0.5 ** k]))
        moved = stop.advance(k)
        if moved.any():
            moves.append((k, moved.tolist(), stop.stage.tolist(), stop.done.tolist()))
    assert CHECK_EVERY == 5
    assert moves == [(4, [True, False], [2, 0], [False, False]),     # the empty stage is skipped
                     (9, [True, False], [2, 0], [True, False]),
                     (29, [False, True], [2, 2], [True, False]),
                     (59, [False, True], [2, 2], [True, True])]
    assert stop.used.tolist() == [10, 60]
    assert stop.factors().tolist() == [0.0, 0.0]


def test_per_sample_stage_factors_are_exact_for_adam():
    """Adam at base rate with a sample's update scaled by 0.1 is Adam at a tenth of the rate."""
    obj = _objective(_images(2))
    u0 = gaussian_init(2, (1, 32, 32))

    def run(lr, factors):
        param = as_parameterisation(u0)
        stepper = make_stepper("adam", param, lr)
        from preimage.optim import Closure
        closure = Closure(obj, param)
        if factors is None:
            stepper.start_stage(1.0, reset=True)
        else:
            stepper.set_stage_factors(torch.tensor(factors, dtype=torch.float64), torch.ones(2, dtype=torch.bool))
        for _ in range(20):
            stepper.step(closure)
        return param().detach()

    mixed = run(1e-2, [0.1, 1.0])
    assert torch.allclose(mixed[0], run(1e-3, None)[0], atol=1e-6)
    assert torch.equal(mixed[1], run(1e-2, None)[1])


def test_data_term_sees_only_the_running_samples():
    obj = _objective(_images(2))
    sizes = []
    obj.representation.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[0]))
    res = _run(obj, gaussian_init(2, (1, 32, 32)), [FAST, SLOW], tol=1e-3, window=10)
    # one forward per iteration of each running sample, plus the final energies of both
    assert sum(sizes) == int(res.iterations_used.sum()) + 2
    assert sizes.count(1) == 400 - int(res.iterations_used[0])


class Stop(Exception):
    pass


@pytest.mark.parametrize("method,lr", [("momentum", [FAST, SLOW]), ("adam", 1e-2)])
def test_resume_mid_run_equals_uninterrupted(tmp_path, method, lr):
    """Interrupted after one sample has finished and before the other has: the frozen sample,
    the stages and the windows come back from the checkpoint."""
    obj = _objective(_images(2), lambda_tv=[0.5, 20.0])
    u0 = gaussian_init(2, (1, 32, 32))
    kw = dict(method=method, tol=1e-3, window=10)
    full = _run(obj, u0, lr, **kw)
    first, last = full.iterations_used.tolist()
    stop_at = 10 * ((first + last) // 20)
    assert first < stop_at - 10 and stop_at < last
    ck = tmp_path / "state.safetensors"

    def interrupt(step, u):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        _run(obj, u0, lr, checkpoint=ck, checkpoint_every=10, callback=interrupt, **kw)
    resumed = _run(obj, u0, lr, checkpoint=ck, checkpoint_every=10, **kw)
    assert resumed.resumed_from == stop_at - 10
    assert torch.equal(resumed.iterations_used, full.iterations_used)
    assert torch.equal(resumed.final_stage, full.final_stage)
    assert torch.equal(resumed.u, full.u)
    assert torch.equal(resumed.history, full.history[-len(resumed.history):])
    # other early-stopping settings do not pick up the checkpoint
    assert _run(obj, u0, lr, checkpoint=ck, method=method, tol=1e-2, window=10).resumed_from == 0


def test_bad_settings_are_refused():
    obj = _objective(_images(1))
    u0 = gaussian_init(1, (1, 32, 32))
    with pytest.raises(ValueError, match="tol must be"):
        _run(obj, u0, FAST, tol=-1.0)
    with pytest.raises(ValueError, match="window must be"):
        _run(obj, u0, FAST, tol=1e-3, window=0)


def test_invert_records_iterations_used_per_sample():
    images = _images(2)
    res = invert(Net(), images, restarts=2, lambda_tv=[0.5, 5.0], iterations=120, lr=FAST, progress=False,
                 tol=1e-3, window=10)
    used = torch.tensor(res.settings["iterations_used"])
    assert used.shape == (2, 2, 2) and (used <= 120).all() and (used < 120).any()
    assert res.settings["tol"] == 1e-3 and res.settings["window"] == 10
    plain = invert(Net(), images, iterations=20, lr=FAST, progress=False)
    assert plain.settings["iterations_used"] == [[[20]], [[20]]] and plain.settings["tol"] is None


def test_cli_takes_tol_and_window():
    args = build_parser().parse_args(["invert", "x.png", "--tol", "1e-3", "--window", "7"])
    assert args.tol == 1e-3 and args.window == 7
    assert build_parser().parse_args(["invert", "x.png"]).tol is None
