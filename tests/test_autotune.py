"""jaxmnist.autotune: the plan from timings, measured once per machine and cached, interleaved, never cached from a
busy CPU; fixed plans and the default off the CPU."""

import json

import jax
import pytest

from jaxmnist import autotune, convs, models
from jaxmnist.cli import UsageError
from jaxmnist.convs import ConvPlan, Geometry

# The cnn with its first block composed (models.CNN fuses it by default): two convolution shapes to time.
TWO_CONVS = models.CNN(fuse_first_block=False)


def test_fixed_impls_and_bad_names(monkeypatch):
    with pytest.raises(UsageError, match="unknown --conv-impl 'fastest'"):
        autotune.plan_for('fastest', models.get_model('cnn'), 8)
    monkeypatch.setenv(convs.ENV_IMPL, 'bogus')  # the flag's default: one line naming the variable
    with pytest.raises(UsageError, match=r"unknown \$JAXMNIST_CONV_IMPL='bogus'; choose from"):
        autotune.plan_for(None, models.get_model('cnn'), 8)
    assert autotune.plan_for('eigen', None, 8).compiler_options == convs.LIBRARIES['eigen']  # this XLA accepts it
    assert autotune.plan_for('xla', None, 8) == convs.XLA


def test_choose_takes_the_cheapest_library_then_each_layers_fastest():
    """The library is one per program: the least total over the layers, each in its better formulation there."""
    a, b = Geometry(28, 28, 16, 16, 3, 1, 1, 'float32'), Geometry(2, 2, 256, 256, 3, 1, 1, 'float32')
    timings = {
        a: {'xla/conv': 0.50, 'eigen/conv': 0.10, 'matmul': 0.40, 'rows': 0.30, 'phases': 0.50},
        b: {'xla/conv': 0.02, 'eigen/conv': 0.09, 'matmul': 0.05, 'rows': 0.06, 'phases': 0.09},
    }
    plan = autotune.choose(timings, 'measured')
    assert (plan.library, plan.layers) == ('eigen', ((b.key, 'matmul'),))  # 0.15 in all against xla's 0.42
    timings[a]['rows'] = 0.08  # a GEMM formulation runs under either library: xla's 0.08 x 1.5 + 0.02 costs least
    assert autotune.choose(timings, 'measured') == ConvPlan('xla', 'conv', ((a.key, 'rows'),), 'measured')
    timings[a]['rows'] = 0.30
    # One layer, a GEMM formulation fastest: both libraries cost the same; the one whose convolution is faster runs
    # the rest of the program (the cnn's fused first block: under XLA's default kernels its step took twice as long)
    single = {a: {'xla/conv': 0.11, 'eigen/conv': 0.10, 'matmul': 0.40, 'rows': 0.06, 'phases': 0.11}}
    assert autotune.choose(single, 'measured') == ConvPlan('eigen', 'conv', ((a.key, 'rows'),), 'measured')
    single[a]['rows'] = 0.08  # 1.25x faster alone is not enough for rows (ALONE_MARGIN): slower in a whole step
    assert autotune.choose(single, 'measured') == ConvPlan('eigen', 'conv', (), 'measured')
    timings[a]['xla/conv'] = 0.05
    assert autotune.choose(timings, 'measured') == ConvPlan('xla', 'conv', (), 'measured')


def test_phases_is_chosen_for_a_strided_layer_only_with_its_margin():
    """`phases` (a strided layer's input gradient) must be ALONE_MARGIN['phases'] = 1.2x faster than the convolution
    alone: resnet's 14x14 32->64 3x3/2, 1.14x faster alone, left its step level; its 28x28 layer's 1.43x made it
    0.93x as long."""
    g = Geometry(28, 28, 16, 32, 3, 2, 1, 'float32')
    timings = {g: {'xla/conv': 0.073, 'eigen/conv': 0.035, 'matmul': 0.053, 'rows': 0.029, 'phases': 0.0247}}
    assert autotune.choose(timings, 'measured') == ConvPlan('eigen', 'conv', ((g.key, 'phases'),), 'measured')
    # 1.17x: not enough (rows, 1.21x, is short of its own margin, 1.5x); nor under XLA's default kernels, whose
    # convolution is slower: 1.2 x 0.030 prices it above Eigen's convolution there too
    timings[g]['phases'] = 0.030
    assert autotune.choose(timings, 'measured') == ConvPlan('eigen', 'conv', (), 'measured')


class FakeOthersCpu:
    """host.OthersCpu as if other processes took `share` of the CPU while the convolutions were timed."""

    share_taken = 0.0

    def share(self):
        return self.share_taken


def test_measured_plan_times_each_shape_once_then_reads_the_cache(tmp_path, monkeypatch):
    """Real timings of the unfused cnn's two layers at batch 2 (every candidate), cached under this CPU's
    identity; a second call measures nothing and gives the same plan. (A quiet CPU faked: the suite's other worker shares it.)"""
    monkeypatch.setenv(autotune.ENV_CACHE, str(tmp_path / 'timings.json'))
    monkeypatch.setattr(autotune.host, 'OthersCpu', FakeOthersCpu)
    timed = []
    time_candidates = autotune.time_candidates
    monkeypatch.setattr(autotune, 'time_candidates', lambda *a: timed.append(a[0]) or time_candidates(*a))
    said = []
    first = autotune.measured_plan(TWO_CONVS, 2, say=said.append)
    assert len(timed) == 2 and first.source == 'measured'
    ways = len(autotune.candidates())  # six where oneDNN's kernels build, five elsewhere
    assert said[0].startswith(f'timing {ways} ways to run each of 2 convolution shapes') and 'cached in' in said[-1]
    cached = json.loads((tmp_path / 'timings.json').read_text())['machines'][autotune.cpu_identity()]
    assert sorted(cached) == [
        '12x12 10->20 5x5/1 pad 0 float32 batch 2',
        '28x28 1->10 5x5/1 pad 0 float32 batch 2 no-input-grad',
    ]
    assert all(sorted(t) == sorted(autotune.candidates()) and min(t.values()) > 0 for t in cached.values())
    timed.clear()
    second = autotune.measured_plan(TWO_CONVS, 2, say=said.append)
    assert timed == [] and second.source == 'cached'
    assert second == first and hash(second) == hash(first)  # the same plan: programs compiled for it are reused


def test_timings_from_a_busy_cpu_choose_this_runs_plan_and_are_not_cached(tmp_path, monkeypatch):
    """Other processes took 40 % of the CPU while the candidates ran: the plan is theirs for this run only, the
    run says so, and the next run measures again."""
    path = tmp_path / 'timings.json'
    monkeypatch.setenv(autotune.ENV_CACHE, str(path))
    monkeypatch.setattr(FakeOthersCpu, 'share_taken', 0.4)
    monkeypatch.setattr(autotune.host, 'OthersCpu', FakeOthersCpu)
    timed = []
    times = {'xla/conv': 1.0, 'eigen/conv': 2.0, 'matmul': 3.0, 'rows': 3.0, 'phases': 2.0}
    monkeypatch.setattr(autotune, 'time_candidates', lambda g, b, stem: timed.append(g) or times)
    said = []
    plan = autotune.measured_plan(TWO_CONVS, 2, say=said.append)
    assert plan == ConvPlan('xla', 'conv', (), 'measured') and len(timed) == 2
    assert said[-1].endswith('not cached (other processes took 40% of the CPU)') and not path.exists()
    monkeypatch.setattr(FakeOthersCpu, 'share_taken', 0.1)  # quiet enough: measured again, and cached
    autotune.measured_plan(TWO_CONVS, 2, say=said.append)
    assert len(timed) == 4 and 'cached in' in said[-1] and path.exists()


def time_with_fake_calls(monkeypatch, cost: dict, stem: bool = False, stride: int = 2) -> tuple[dict, list]:
    """autotune.time_candidates for a 14x14 32->64 3x3 layer where each candidate's n-th call takes cost[name][n]
    seconds of a fake clock: (the times it returns, the names of the calls in order). The five candidates of XLA's
    kernels (oneDNN's is one more name in the same loop, wherever it builds)."""
    clock, calls = [0.0], []
    xlas = {n: c for n, c in autotune.CANDIDATES.items() if n != 'onednn'}
    monkeypatch.setattr(autotune, 'candidates', lambda: xlas)

    def compiled(g, b, lib, formulation, stem):
        name = autotune.candidate_name(lib, formulation)

        def call():
            clock[0] += cost[name][sum(c == name for c in calls)]
            calls.append(name)

        return call

    monkeypatch.setattr(autotune, '_compiled_candidate', compiled)
    monkeypatch.setattr(autotune, 'time', type('FakeTime', (), {'perf_counter': staticmethod(lambda: clock[0])}))
    return autotune.time_candidates(Geometry(14, 14, 32, 64, 3, stride, 1, 'float32'), 8, stem), calls


def test_candidates_are_timed_in_interleaved_rounds_the_slow_ones_dropped(monkeypatch):
    """One call of each candidate per round, the best call kept, so that a burst of other work (here: 50 s during
    Eigen's first call) slows one round and not one candidate; from the second round on, a candidate over twice the
    fastest is not called again."""
    cost = {
        'xla/conv': [3.0, 3.0],
        'eigen/conv': [50.0, 1.0, 1.2],
        'matmul': [9.0, 8.0],
        'rows': [4.0, 4.0],
        'phases': [2.5, 2.5],
    }
    times, calls = time_with_fake_calls(monkeypatch, cost)
    assert times == {'xla/conv': 3.0, 'eigen/conv': 1.0, 'matmul': 8.0, 'rows': 4.0, 'phases': 2.5}
    # rounds 1 and 2: all five (Eigen's slow first call drops nothing); round 3: Eigen alone (all others > 2 x 1)
    assert calls == ['xla/conv', 'eigen/conv', 'matmul', 'rows', 'phases'] * 2 + ['eigen/conv']


def test_a_stems_rows_and_phases_are_its_convolution_and_never_timed(monkeypatch):
    """Without an input gradient `rows` and `phases` are XLA's convolution, the same program, and so is `phases` at
    stride 1: not called, never chosen over it."""
    cost = {'xla/conv': [3.0] * 3, 'eigen/conv': [1.0] * 3, 'matmul': [1.5] * 3, 'rows': [0.5] * 3}
    times, calls = time_with_fake_calls(monkeypatch, cost, stem=True)
    assert {'rows', 'phases'}.isdisjoint(calls)
    assert times == {'xla/conv': 3.0, 'eigen/conv': 1.0, 'matmul': 1.5, 'rows': 3.0, 'phases': 3.0}
    g = Geometry(28, 28, 1, 10, 5, 1, 0, 'float32')
    assert autotune.choose({g: times}, 'measured') == ConvPlan('eigen', 'conv', (), 'measured')
    times, calls = time_with_fake_calls(monkeypatch, cost, stride=1)
    assert 'phases' not in calls and 'rows' in calls and times['phases'] == 3.0


def test_cheap_layers_get_more_rounds(monkeypatch):
    """Calls of 10 ms: rounds go on until the layer has been timed for MIN_LAYER_S (0.25 s: 5 rounds of 50 ms)."""
    cost = {name: [0.01] * autotune.MAX_ROUNDS for name in autotune.CANDIDATES}
    times, calls = time_with_fake_calls(monkeypatch, cost)
    assert autotune.MIN_LAYER_S == 0.25 and calls == list(autotune.candidates()) * 5
    assert times == pytest.approx(dict.fromkeys(autotune.candidates(), 0.01))


@pytest.mark.parametrize(
    'spoil',
    [
        '{"format": 1, "mach',
        'null',
        '{"format": 0}',
        '{"format": 1, "machines": {"%s": {"12x12 10->20 5x5/1 pad 0 float32 batch 2": {"xla/conv": "x"}}}}',
    ],
)
def test_a_damaged_or_foreign_cache_is_measured_again_and_rewritten(spoil, tmp_path, monkeypatch):
    path = tmp_path / 'timings.json'
    path.write_text(spoil.replace('%s', autotune.cpu_identity()))
    monkeypatch.setenv(autotune.ENV_CACHE, str(path))
    monkeypatch.setattr(autotune.host, 'OthersCpu', FakeOthersCpu)
    times = {'xla/conv': 2.0, 'eigen/conv': 2.0, 'matmul': 1.0, 'rows': 1.5, 'phases': 2.0}
    monkeypatch.setattr(autotune, 'time_candidates', lambda g, b, stem: times)
    plan = autotune.measured_plan(TWO_CONVS, 2, say=lambda m: None)
    assert plan.layers and all(f == 'matmul' for _, f in plan.layers)
    assert len(json.loads(path.read_text())['machines'][autotune.cpu_identity()]) == 2
    assert not list(tmp_path.glob('.*.tmp'))  # written by an atomic rename


def test_auto_off_the_cpu_and_the_environment_default(monkeypatch):
    monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
    assert autotune.plan_for('auto', None, 8) == convs.XLA  # nothing measured: XLA's own choice
    assert ConvPlan('eigen').compiler_options == {}  # no CPU options for another backend's programs
    monkeypatch.setenv(convs.ENV_IMPL, 'matmul')
    assert autotune.plan_for(None, None, 8).default == 'matmul'


def test_timings_are_kept_apart_for_capped_vector_extensions(monkeypatch):
    """An older CPU emulated (XLA's or oneDNN's kernels capped at AVX2) is another machine to the cache."""
    monkeypatch.delenv('XLA_FLAGS', raising=False)
    monkeypatch.delenv('ONEDNN_MAX_CPU_ISA', raising=False)
    plain = autotune.cpu_identity()
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')
    monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_max_isa=AVX2')
    assert autotune.cpu_identity() == f'{plain}, XLA_FLAGS=--xla_cpu_max_isa=AVX2, ONEDNN_MAX_CPU_ISA=AVX2'
