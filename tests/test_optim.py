import pytest
import torch

from preimage.objective import InversionObjective
from preimage.optim import Closure, as_parameterisation, gaussian_init, make_schedule, make_stepper, minimise
from preimage.representations.base import Representation


class Pool(Representation):
    def forward(self, x):
        return torch.nn.functional.avg_pool2d(x, 4)


def _problem(n=2):
    torch.manual_seed(1)
    img = torch.rand(n, 1, 16, 16) * 255
    rep = Pool()
    return InversionObjective(rep, rep(img), (1, 16, 16), lambda_alpha=1e3, lambda_tv=0.5)


def test_schedules():
    assert sum(n for n, _ in make_schedule("shallow")) == 800
    assert sum(n for n, _ in make_schedule("cnn")) == 400
    s = make_schedule("shallow", 80)
    assert [n for n, _ in s] == [20, 20, 20, 20] and [f for _, f in s] == [1.0, 0.1, 0.01, 0.001]
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("fast")


def test_gaussian_init_has_unit_norm_and_is_seeded():
    u = gaussian_init(3, (1, 8, 8), seed=5)
    assert torch.allclose(u.flatten(1).norm(dim=1), torch.ones(3))
    assert torch.equal(u, gaussian_init(3, (1, 8, 8), seed=5))
    assert not torch.equal(u, gaussian_init(3, (1, 8, 8), seed=6))


def test_momentum_update_matches_the_papers_rule_with_reset():
    obj = _problem(1)
    u0 = gaussian_init(1, (1, 16, 16))
    lr = 1e-4
    res = minimise(obj, u0, lr=lr, schedule=[(2, 1.0), (1, 0.1)], progress=False)
    # by hand: v ← 0.9 v − η ∇E; u ← u + v; v reset when the rate changes
    u = u0.clone()
    v = torch.zeros_like(u)
    for eta, reset in ((lr, False), (lr, False), (lr * 0.1, True)):
        if reset:
            v.zero_()
        uu = u.clone().requires_grad_(True)
        obj(uu).total.sum().backward()
        v = 0.9 * v - eta * uu.grad
        u = u + v
    assert torch.allclose(res.u, u, atol=1e-6, rtol=1e-5)


def test_descends_and_batches():
    obj = _problem(2)
    u0 = gaussian_init(2, (1, 16, 16))
    with torch.no_grad():
        e0 = obj(u0).total
    res = minimise(obj, u0, lr=1e-2, schedule=[(60, 1.0), (20, 0.1)], progress=False)
    assert all(e < float(a) * 0.5 for e, a in zip(res.energy["total"], e0))
    assert res.history.shape[1] == 2


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    obj = _problem(1)
    u0 = gaussian_init(1, (1, 16, 16))
    full = minimise(obj, u0, lr=1e-2, schedule=[(30, 1.0), (30, 0.1)], progress=False)
    ck = tmp_path / "state.safetensors"

    class Stop(Exception):
        pass

    def interrupt(step, u):
        if step == 40:
            raise Stop

    with pytest.raises(Stop):
        minimise(obj, u0, lr=1e-2, schedule=[(30, 1.0), (30, 0.1)], progress=False, checkpoint=ck,
                 checkpoint_every=10, callback=interrupt)
    resumed = minimise(obj, u0, lr=1e-2, schedule=[(30, 1.0), (30, 0.1)], progress=False, checkpoint=ck,
                       checkpoint_every=10)
    assert resumed.resumed_from == 30  # the last checkpoint before the interruption
    assert torch.allclose(resumed.u, full.u, atol=1e-6)
    # different settings do not pick up the foreign checkpoint
    other = minimise(obj, u0, lr=2e-2, schedule=[(30, 1.0), (30, 0.1)], progress=False, checkpoint=ck)
    assert other.resumed_from == 0


def test_divergence_is_reported_clearly():
    obj = _problem(1)
    with pytest.raises(FloatingPointError, match="after 8 rate halvings; lower the learning rate"):
        minimise(obj, gaussian_init(1, (1, 16, 16)), lr=1e6, schedule=[(200, 1.0)], progress=False)


@pytest.mark.parametrize("method", ["adam", "lbfgs"])
def test_other_methods_descend(method):
    obj = _problem(1)
    u0 = gaussian_init(1, (1, 16, 16))
    with torch.no_grad():
        e0 = float(obj(u0).total)
    lr = 1e-3 if method == "adam" else 1.0
    res = minimise(obj, u0, lr=lr, schedule=[(40, 1.0)], method=method, progress=False)
    assert res.energy["total"][0] < e0 * 0.5


def test_lbfgs_costs_one_evaluation_per_step_and_backtracks_per_sample():
    """The accepted point's gradient starts the next step (one evaluation a step once the history
    scales the direction); a trial step far too long is shortened for that sample only."""
    obj = _problem(2)
    u0 = gaussian_init(2, (1, 16, 16))
    calls = []
    rep = obj.representation
    handle = rep.register_forward_hook(lambda m, i, o: calls.append(int(i[0].shape[0])))
    try:
        res = minimise(obj, u0, lr=1.0, schedule=[(40, 1.0)], method="lbfgs", progress=False)
    finally:
        handle.remove()
    assert sum(calls) <= 2 * 40 + 2 * 6  # the first step evaluates twice; a few backtracks at most
    with torch.no_grad():
        e0 = obj(u0).total
    assert all(e < 0.05 * float(s) for e, s in zip(res.energy["total"], e0))
    # a rate of 1e4 overshoots: backtracking keeps every step a descent, per sample
    far = minimise(obj, u0, lr=1e4, schedule=[(40, 1.0)], method="lbfgs", progress=False)
    assert (far.history[1:] <= far.history[:-1] * (1 + 1e-6)).all()
    assert torch.isfinite(far.u).all()


BLOWUP_LR = 3.0  # on _problem: blows up within 20 iterations (0.05 is stable)


def test_divergence_backs_off_per_sample_and_recovers():
    """A rate that makes one sample blow up is halved for that sample only, which then converges;
    the other sample keeps its rate."""
    obj = _problem(2)
    u0 = gaussian_init(2, (1, 16, 16))
    stable = minimise(obj, u0, lr=[1e-2, 1e-2], schedule=[(150, 1.0), (50, 0.1)], progress=False)
    res = minimise(obj, u0, lr=[BLOWUP_LR, 1e-2], schedule=[(150, 1.0), (50, 0.1)], progress=False)
    backoffs = res.backoffs.tolist()
    final_lr = res.final_lr.tolist()
    assert backoffs[0] >= 1 and backoffs[1] == 0
    assert final_lr[0] < BLOWUP_LR and final_lr[1] == pytest.approx(1e-2)
    assert all(torch.isfinite(torch.tensor(res.energy["total"])))
    assert res.energy["total"][1] == pytest.approx(stable.energy["total"][1], rel=1e-5)
    assert res.energy["data"][0] < 0.2 * obj(u0).data[0].item()


def test_divergence_without_backoff_raises():
    with pytest.raises(FloatingPointError, match="diverged"):
        minimise(_problem(1), gaussian_init(1, (1, 16, 16)), lr=1e2, schedule=[(50, 1.0)], progress=False,
                 max_backoffs=0)


class Stop(Exception):
    pass


def _stop_at(iteration):
    def callback(step, u):
        if step == iteration:
            raise Stop
    return callback


def test_typed_result_without_backoffs():
    obj = _problem(2)
    res = minimise(obj, gaussian_init(2, (1, 16, 16)), lr=1e-2, schedule=[(20, 1.0)], progress=False)
    assert res.backoffs.dtype == torch.long and res.backoffs.tolist() == [0, 0]
    assert res.final_lr.dtype == torch.float64 and res.final_lr.tolist() == pytest.approx([1e-2, 1e-2])
    adam = minimise(obj, gaussian_init(2, (1, 16, 16)), lr=1e-3, schedule=[(5, 1.0)], method="adam", progress=False)
    assert adam.backoffs.tolist() == [0, 0] and adam.final_lr.tolist() == pytest.approx([1e-3, 1e-3])


def test_resumed_run_keeps_its_halvings(tmp_path):
    """Checkpoints hold the halving counts (and the back-off state): a resumed run reports the
    halvings of the whole run and ends where the uninterrupted one does."""
    obj = _problem(2)
    u0 = gaussian_init(2, (1, 16, 16))
    sched = [(150, 1.0), (50, 0.1)]
    full = minimise(obj, u0, lr=[BLOWUP_LR, 1e-2], schedule=sched, progress=False)
    assert full.backoffs[0] >= 1
    ck = tmp_path / "state.safetensors"
    with pytest.raises(Stop):
        minimise(obj, u0, lr=[BLOWUP_LR, 1e-2], schedule=sched, progress=False, checkpoint=ck,
                 checkpoint_every=10, callback=_stop_at(100))
    resumed = minimise(obj, u0, lr=[BLOWUP_LR, 1e-2], schedule=sched, progress=False, checkpoint=ck)
    assert resumed.resumed_from == 90
    assert torch.equal(resumed.backoffs, full.backoffs)
    assert torch.equal(resumed.final_lr, full.final_lr)
    assert torch.allclose(resumed.u, full.u, atol=1e-6)


def test_resumed_run_does_not_get_more_halvings(tmp_path):
    """A rate that diverges at every check uses up its 8 halvings at the same iteration whether
    the run was interrupted or not."""
    obj = _problem(1)
    u0 = gaussian_init(1, (1, 16, 16))
    with pytest.raises(FloatingPointError, match="iteration 90 after 8 rate halvings"):
        minimise(obj, u0, lr=1e6, schedule=[(200, 1.0)], progress=False)
    ck = tmp_path / "state.safetensors"
    with pytest.raises(Stop):
        minimise(obj, u0, lr=1e6, schedule=[(200, 1.0)], progress=False, checkpoint=ck, checkpoint_every=10,
                 callback=_stop_at(40))
    with pytest.raises(FloatingPointError, match="iteration 90 after 8 rate halvings"):
        minimise(obj, u0, lr=1e6, schedule=[(200, 1.0)], progress=False, checkpoint=ck, checkpoint_every=10)


@pytest.mark.parametrize("method,lr", [("adam", 1e-2), ("lbfgs", 1.0)])
def test_other_methods_resume_with_their_state(tmp_path, method, lr):
    """Adam's moments and L-BFGS's history are in the checkpoint: resuming equals not stopping."""
    obj = _problem(1)
    u0 = gaussian_init(1, (1, 16, 16))
    sched = [(20, 1.0), (20, 0.1)]
    full = minimise(obj, u0, lr=lr, schedule=sched, method=method, progress=False)
    ck = tmp_path / "state.safetensors"
    with pytest.raises(Stop):
        minimise(obj, u0, lr=lr, schedule=sched, method=method, progress=False, checkpoint=ck,
                 checkpoint_every=10, callback=_stop_at(30))
    resumed = minimise(obj, u0, lr=lr, schedule=sched, method=method, progress=False, checkpoint=ck)
    assert resumed.resumed_from == 20
    assert torch.allclose(resumed.u, full.u, atol=1e-6)


def test_stepper_state_round_trip():
    obj = _problem(2)
    u0 = gaussian_init(2, (1, 16, 16))

    def run(stepper, n):
        closure = Closure(obj, stepper.param)
        for _ in range(n):
            stepper.step(closure, recorded=True)
            stepper.settle(closure.terms.total.detach().cpu(), 0)

    a = make_stepper("momentum", as_parameterisation(u0), [BLOWUP_LR, 1e-2])
    a.start_stage(1.0, reset=True)
    run(a, 25)
    b = make_stepper("momentum", as_parameterisation(torch.zeros_like(u0)), [BLOWUP_LR, 1e-2])
    b.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in a.state_dict().items()})
    b.start_stage(1.0, reset=False)
    assert torch.equal(b.halvings(), a.halvings()) and torch.equal(b.rates(), a.rates())
    run(a, 5)
    run(b, 5)
    assert torch.equal(a.param.u, b.param.u)
