"""The cost model ([Note: cost model] in synthgrad/parallel/costmodel.py) and `synthgrad plan`: arithmetic only."""

from __future__ import annotations

import json
import math

import pytest

from synthgrad.cli import main
from synthgrad.errors import ConfigError
from synthgrad.parallel.costmodel import Profile, plan, predict
from synthgrad.parallel.link import LinkSpec
from synthgrad.parallel.profiles import fcn_layer_flops, profile_from_run
from synthgrad.parallel.staleness import derive_staleness

N = 256


def balanced(K: int, stage_s: float = 0.04, **kw) -> Profile:
    return Profile.uniform([stage_s] * K, 4096.0, N, **kw)


@pytest.mark.parametrize("simulate_order", [False, True], ids=["closed-form", "torch-order"])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("K", "M"), [(2, 2), (4, 8), (8, 32)])
def test_gpipe_and_1f1b_bubble_is_k_minus_1_over_m_plus_k_minus_1(schedule, K, M, simulate_order) -> None:
    p = predict(schedule, balanced(K), K, microbatches=M, simulate_order=simulate_order)
    assert ("simulated" in p.note) == simulate_order
    assert p.bubble == pytest.approx((K - 1) / (M + K - 1))
    assert p.step_s == pytest.approx((M + K - 1) * 0.04 / M)
    assert p.samples_per_s == pytest.approx(N / p.step_s)


@pytest.mark.parametrize("simulate_order", [False, True], ids=["closed-form", "torch-order"])
@pytest.mark.parametrize("schedule", ["interleaved-1f1b", "looped-bfs"])
def test_interleaved_bubble_divides_by_the_virtual_stages(schedule, simulate_order) -> None:
    """Balanced, M a multiple of K: torch's interleaved order reaches Megatron's bubble exactly (simulated)."""
    K, M = 4, 8
    p = predict(schedule, balanced(K), K, microbatches=M, simulate_order=simulate_order)
    assert p.per_rank == 2
    assert p.bubble == pytest.approx((K - 1) / (2 * M + K - 1))
    assert ("simulated" in p.note) == simulate_order


def test_zero_bubble_schedules_use_the_b_w_split() -> None:
    K, M = 4, 8
    closed = {"simulate_order": False}
    zb = predict("zero-bubble", balanced(K), K, microbatches=M, **closed)  # ZB-H1: (K−1)(F + B − W), F = B = W
    assert zb.bubble == pytest.approx((K - 1) / (3 * 2 * M + K - 1))
    assert predict("zbv", balanced(K), K, microbatches=M, **closed).bubble == pytest.approx(0.0)  # F + B − 2W = 0
    heavy_forward = balanced(K, forward_fraction=0.5)  # F = 1/2, B = W = 1/4: F + B − 2W = 1/4
    zbv = predict("zbv", heavy_forward, K, microbatches=M, **closed)
    tau = 0.04 / M
    assert zbv.step_s == pytest.approx(M * tau + (K - 1) * tau / 2 * 0.25)  # τ/2: a chunk


def test_model_parallel_and_single() -> None:
    p = predict("model-parallel", balanced(4), 4)
    assert (p.microbatches, p.bubble) == (1, pytest.approx(3 / 4))
    assert p.step_s == pytest.approx(4 * 0.04)
    s = predict("single", balanced(4), 4)
    assert (s.stages, s.step_s, s.bubble) == (1, pytest.approx(0.16), 0.0)


def test_stale_throughput_is_one_over_the_slowest_stage() -> None:
    prof = Profile.uniform([0.01, 0.03, 0.02], 4096.0, N)
    p = predict("stale", prof, 3)
    assert p.step_s == pytest.approx(0.03)
    assert p.samples_per_s == pytest.approx(N / 0.03)
    assert p.bubble == pytest.approx(1 - 0.06 / 0.09)
    with_overhead = predict("stale", Profile.uniform([0.01, 0.03, 0.02], 4096.0, N, overhead_s=0.01), 3)
    assert with_overhead.samples_per_s == pytest.approx(N / 0.04)


def test_decoupled_adds_the_synthesizer_on_every_stage_but_the_last() -> None:
    prof = Profile.uniform([0.03, 0.03], 4096.0, N, synth_s=0.005)
    assert predict("decoupled", prof, 2).step_s == pytest.approx(0.035)
    assert predict("stale", prof, 2).step_s == pytest.approx(0.03)
    assert predict("decoupled", Profile.uniform([0.03, 0.04], 4096.0, N, synth_s=0.005), 2).step_s == (
        pytest.approx(0.04)
    )


def test_link_delay_is_hidden_when_the_staleness_bound_is_large_enough() -> None:
    prof, link = balanced(2, 0.01), LinkSpec(delay_s=0.02)
    needed = derive_staleness(0.01, link, 0, margin=0)["staleness"]
    assert needed == 1 + 4  # round trip 40 ms = 4 steps of 10 ms
    hidden = predict("decoupled", prof, 2, link=link, staleness=needed)
    assert hidden.step_s == pytest.approx(0.01) and hidden.staleness_needed == needed
    waiting = predict("decoupled", prof, 2, link=link, staleness=2)  # 3 steps must span 2T + 2d = 60 ms
    assert waiting.step_s == pytest.approx(0.06 / 3)
    assert "needed" in waiting.note
    auto = predict("stale", prof, 2, link=link, staleness="auto")
    assert auto.staleness == needed + 1 and auto.step_s == pytest.approx(0.01)


def test_bandwidth_bounds_the_asynchronous_pipelines() -> None:
    link = LinkSpec(bandwidth_bps=8e6)  # 1 MB/s: a batch of 256 × 4096 bytes takes 1.05 s
    p = predict("decoupled", balanced(2, 0.01), 2, link=link, staleness="auto")
    assert p.step_s == pytest.approx(N * 4096 / 1e6)
    assert "bandwidth-bound" in p.note


def test_the_closed_form_pays_every_round_trip() -> None:
    K, M, d = 4, 8, 0.001
    p = predict("1f1b", balanced(K), K, microbatches=M, link=LinkSpec(delay_s=d), simulate_order=False)
    assert p.step_s == pytest.approx((M + K - 1) * 0.04 / M + 2 * (M - 1) * d + 2 * (K - 1) * d)
    assert p.comm_s == pytest.approx(2 * (M - 1) * d + 2 * (K - 1) * d)


def test_simulated_1f1b_overlaps_round_trips_with_the_warmup() -> None:
    """K = 2, M = 2, F = a, B = 2a per micro-batch, one-way delay d (torch's 1F1B: rank 0 runs K − 0 = 2
    forwards first). Rank 0: F0 0..a, F1 ..2a; rank 1: F0 a+d..2a+d, B0 ..4a+d, F1 ..5a+d, B1 ..7a+d; rank 0: B0
    at 4a+2d..6a+2d, B1 at 7a+2d..9a+2d. One round trip on the critical path, not the closed form's two."""
    K, M, d = 2, 2, 0.01
    a = 0.04 / M / 3
    p = predict("1f1b", balanced(K), K, microbatches=M, link=LinkSpec(delay_s=d))
    assert p.step_s == pytest.approx(9 * a + 2 * d)
    assert p.comm_s == pytest.approx(2 * d)
    closed = predict("1f1b", balanced(K), K, microbatches=M, link=LinkSpec(delay_s=d), simulate_order=False)
    assert closed.step_s == pytest.approx(9 * a + 4 * d)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_simulated_flushed_schedules_pay_at_least_one_round_trip_across_every_cut(schedule) -> None:
    K, M, d = 4, 8, 0.005
    free = predict(schedule, balanced(K), K, microbatches=M)
    slow = predict(schedule, balanced(K), K, microbatches=M, link=LinkSpec(delay_s=d))
    closed = predict(schedule, balanced(K), K, microbatches=M, link=LinkSpec(delay_s=d), simulate_order=False)
    assert free.step_s + 2 * (K - 1) * d - 1e-12 <= slow.step_s <= closed.step_s + 1e-12


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("K", "M"), [(2, 2), (3, 5), (4, 8)])
def test_single_stage_order_runs_every_computation_once_with_matching_messages(schedule, K, M) -> None:
    from synthgrad.parallel.schedule_sim import single_stage_order

    order = single_stage_order(schedule, K, M)
    assert order is not None and len(order) == K
    for r, ops in enumerate(order):
        for kind in ("F", "B"):
            assert sorted(m for k, s, m in ops if k == kind) == list(range(M)) and {s for _, s, _ in ops} == {r}
        assert sum(k == "SEND_F" for k, _, _ in ops) == (M if r < K - 1 else 0)
        assert sum(k == "RECV_F" for k, _, _ in ops) == (M if r > 0 else 0)
        assert sum(k == "SEND_B" for k, _, _ in ops) == (M if r > 0 else 0)
        assert sum(k == "RECV_B" for k, _, _ in ops) == (M if r < K - 1 else 0)
    if schedule == "1f1b":  # torch 2.13 runs K − r forwards before rank r's first backward
        for r, ops in enumerate(order):
            computed = [k for k, _, _ in ops if k in ("F", "B")]
            assert computed.index("B") == min(M, K - r)


def test_single_stage_order_is_none_where_torch_refuses_or_has_a_list() -> None:
    from synthgrad.parallel.schedule_sim import single_stage_order

    assert single_stage_order("1f1b", 4, 2) is None  # torch: at least as many micro-batches as stages
    assert single_stage_order("interleaved-1f1b", 2, 4) is None
    assert single_stage_order("gpipe", 4, 2) is not None


def test_impossible_configurations_are_reported() -> None:
    with pytest.raises(ConfigError, match="need 8 layers"):
        predict("zero-bubble", Profile((0.1,) * 7, (1.0,) * 6, N), 4)
    rows = plan(lambda K: Profile((0.1,) * 7, (1.0,) * 6, N), [2, 4], ["zbv", "single"])
    assert [("skipped" in r) for r in rows] == [False, True, False]
    with pytest.raises(ConfigError):
        Profile((0.1, -1.0), (1.0,), N)


def write_run(folder, schedule="stale", method="backprop") -> None:
    folder.mkdir()
    per_stage = [
        {"stage": 0, "layers": [0, 1, 2], "compute_s": 35.5, "comm_s": 0.5, "wait_s": 5.0, "threads": 1},
        {"stage": 1, "layers": [3, 4, 5, 6], "compute_s": 40.0, "comm_s": 0.4, "wait_s": 1.6, "threads": 1},
    ]
    summary = {"schedule": schedule, "stages": 2, "steps": 600, "train_time_s": 45.0, "samples_per_s": 3413.3,
               "per_stage": per_stage}  # fmt: skip
    config = {"model": "fcn", "dataset": "mnist", "layers": 7, "width": 1024, "batch_size": 256,
              "schedule": schedule, "method": method, "max_staleness": 1, "microbatches": None,
              "link_delay_ms": 0.0, "link_bandwidth": None}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.json").write_text(json.dumps(config))


def test_profile_from_a_run_folder(tmp_path) -> None:
    write_run(tmp_path / "run")
    prof, info = profile_from_run(tmp_path / "run")
    assert (info["schedule"], info["stages"], info["staleness"]) == ("stale", 2, 1)
    assert prof.layers == 7 and prof.cut_bytes == (4096.0,) * 6
    assert sum(prof.layer_s[:3]) == pytest.approx(36.0 / 600)
    assert sum(prof.layer_s[3:]) == pytest.approx(40.4 / 600)
    w = fcn_layer_flops(7, 1024)
    assert prof.layer_s[0] / prof.layer_s[1] == pytest.approx(w[0] / w[1])
    assert prof.overhead_s == pytest.approx(45.0 / 600 - 42.0 / 600)
    p = predict("stale", prof, 2, staleness=1)
    assert p.samples_per_s == pytest.approx(256 / (40.4 / 600 + prof.overhead_s))


def test_plan_from_a_run_folder_prints_a_table_and_writes_json(tmp_path, capsys) -> None:
    write_run(tmp_path / "run")
    out = tmp_path / "plan.json"
    code = main(["plan", "--from", str(tmp_path / "run"), "--stages", "2,4", "--schedules", "1f1b,stale",
                 "--link-delay-ms", "5", "--json", str(out)])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "1f1b" in text and "stale" in text and "samples/s" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["schedule"], r["stages"]) for r in rows] == [("1f1b", 2), ("1f1b", 4), ("stale", 2), ("stale", 4)]
    assert rows[2]["staleness"] == 1 and "needed" in rows[2]["note"]  # S = 1 cannot hide 10 ms


def test_plan_with_explicit_numbers_and_a_plot(tmp_path, capsys) -> None:
    png = tmp_path / "plan.png"
    code = main(["plan", "--stage-ms", "10", "--message-kb", "4", "--stages", "2,4,8", "--link-bandwidth", "1gbit",
                 "--schedules", "1f1b,decoupled,single", "--plot", str(png)])  # fmt: skip
    assert code == 0 and png.stat().st_size > 1000
    assert capsys.readouterr().out.count("decoupled") == 3


@pytest.mark.parametrize(
    "argv",
    [
        ["plan"],
        ["plan", "--stage-ms", "abc"],
        ["plan", "--stage-ms", "10", "--stages", "2,x"],
        ["plan", "--stage-ms", "10,20", "--stages", "4"],
        ["plan", "--stage-ms", "10", "--link-bandwidth", "fast"],
        ["plan", "--stage-ms", "10", "--schedules", "pipedream"],
        ["plan", "--stage-ms", "10", "--max-staleness", "-1"],
        ["plan", "--stage-ms", "10", "--microbatches", "0"],
        ["plan", "--stage-ms", "10", "--link-delay-ms", "nan"],
        ["plan", "--from", "/nonexistent/run"],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, capsys) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "error" in err


def test_from_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    (tmp_path / "summary.json").write_text("[1, 2]")
    (tmp_path / "config.json").write_text("{}")
    assert main(["plan", "--from", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------- torch's action order, simulated
def test_simulation_hand_computed() -> None:
    """One micro-batch over two ranks: F 1 s, B 2 s per stage, a message 0.5 s on the link plus 0.25 s delay."""
    from synthgrad.parallel.schedule_sim import simulate

    order = [[("F", 0, 0), ("SEND_F", 0, 0), ("RECV_B", 0, 0), ("B", 0, 0)],
             [("RECV_F", 1, 0), ("F", 1, 0), ("B", 1, 0), ("SEND_B", 1, 0)]]  # fmt: skip
    step, busy = simulate(order, lambda kind, stage: {"F": 1.0, "B": 2.0}[kind], lambda cut: 0.5, lambda s: s, 0.25)
    # rank 0: F ends at 1; arrives 1.75; rank 1: F 1.75..2.75, B ..4.75; back at 5.5; rank 0's B 5.5..7.5
    assert (step, busy) == (pytest.approx(7.5), [3.0, 3.0])


def test_a_posted_receive_does_not_block_the_work_before_its_use() -> None:
    from synthgrad.parallel.schedule_sim import simulate

    order = [[("RECV_B", 0, 0), ("F", 0, 1), ("B", 0, 0)], [("B", 1, 0), ("SEND_B", 1, 0)]]
    step, _ = simulate(order, lambda kind, stage: {"F": 1.0, "B": 2.0}[kind], lambda cut: 0.0, lambda s: s)
    assert step == pytest.approx(4.0)  # F 0..1 while the gradient is on its way (arrives at 2), B 2..4


def test_a_deadlocked_order_is_an_error() -> None:
    from synthgrad.parallel.schedule_sim import simulate

    with pytest.raises(RuntimeError, match="deadlocks"):
        simulate([[("RECV_B", 0, 0), ("B", 0, 0)], [("RECV_F", 1, 0), ("F", 1, 0)]], lambda k, s: 1.0,
                 lambda cut: 0.0, lambda s: s)  # fmt: skip


@pytest.mark.parametrize("schedule", ["interleaved-1f1b", "looped-bfs", "zero-bubble", "zbv", "dualpipev"])
def test_torch_order_runs_every_computation_once(schedule) -> None:
    from synthgrad.parallel.schedule_sim import torch_order

    K, M = 2, 4
    order = torch_order(schedule, K, M)
    assert order is not None and len(order) == K
    done = [op for rank in order for op in rank if op[0] in ("F", "I", "W", "B")]
    for kind in ("F", "backward"):
        got = sorted((s, m) for k, s, m in done if (k == "F") == (kind == "F") and k != "W")
        assert got == sorted((s, m) for s in range(2 * K) for m in range(M)), kind
    splits = [op for op in done if op[0] == "W"]
    assert (len(splits) > 0) == (schedule in ("zero-bubble", "zbv", "dualpipev"))


def test_torch_order_is_none_where_torch_has_no_list_or_refuses() -> None:
    from synthgrad.parallel.schedule_sim import torch_order

    assert torch_order("1f1b", 2, 4) is None  # single-stage schedules run procedurally
    assert torch_order("dualpipev", 2, 2) is None  # torch: at least as many micro-batches as stages


def test_simulated_zero_bubble_matches_its_bound_and_torch_zbv_does_not_reach_zero() -> None:
    """Balanced, F = B = W: torch's ZB1P order reaches ZB-H1's bubble; its ZB-V order has ZB-H1's bubble too,
    not ZB-H2's zero (what the simulation found; the closed form keeps the paper's bound)."""
    K, M = 4, 8
    zb = predict("zero-bubble", balanced(K), K, microbatches=M)
    assert zb.bubble == pytest.approx((K - 1) / (3 * 2 * M + K - 1))
    zbv = predict("zbv", balanced(K), K, microbatches=M)
    assert zbv.bubble == pytest.approx(zb.bubble)
    assert predict("zbv", balanced(K), K, microbatches=M, simulate_order=False).bubble == pytest.approx(0.0)


def test_link_time_on_the_simulated_critical_path() -> None:
    K, M = 2, 4
    free = predict("zero-bubble", balanced(K), K, microbatches=M)
    slow = predict("zero-bubble", balanced(K), K, microbatches=M, link=LinkSpec(0.005))
    assert free.comm_s == pytest.approx(0.0)
    assert slow.comm_s >= 2 * 2 * 0.005 - 1e-12  # at least one micro-batch's round trip across both cuts
    assert slow.step_s == pytest.approx(free.step_s + slow.comm_s)


def test_microbatch_cost_interpolates_in_log_rows() -> None:
    prof = balanced(2, microbatch_cost=((128, 1.0), (64, 1.3), (32, 1.6)))
    assert [prof.row_factor(r) for r in (256, 128, 64, 32, 8)] == [1.0, 1.0, 1.3, 1.6, 1.6]
    assert prof.row_factor(90) == pytest.approx(1.3 - 0.3 * math.log(90 / 64) / math.log(2))
    base = predict("1f1b", balanced(2), 2, microbatches=4)
    slowed = predict("1f1b", balanced(2, microbatch_cost=((64, 1.3),)), 2, microbatches=4)
    assert slowed.step_s == pytest.approx(base.step_s * 1.3)  # 64-row micro-batches, all compute × 1.3
    with pytest.raises(ConfigError, match="micro-batch costs"):
        balanced(2, microbatch_cost=((64, 0.0),))


# ---------------------------------------------------------------- the host's cost per action ([Note: action cost])
def test_simulated_host_costs_hold_the_rank_before_each_action() -> None:
    """The hand-computed order above with 0.1 s per F / B and 0.05 s per send or receive."""
    from synthgrad.parallel.schedule_sim import simulate

    order = [[("F", 0, 0), ("SEND_F", 0, 0), ("RECV_B", 0, 0), ("B", 0, 0)],
             [("RECV_F", 1, 0), ("F", 1, 0), ("B", 1, 0), ("SEND_B", 1, 0)]]  # fmt: skip
    host = {"F": 0.1, "B": 0.1, "SEND": 0.05, "RECV": 0.05}.__getitem__
    step, busy = simulate(order, lambda kind, stage: {"F": 1.0, "B": 2.0}[kind], lambda cut: 0.5, lambda s: s, 0.25,
                          host)  # fmt: skip
    # rank 0: F 0..1.1, send 1.1..1.15, arrives 1.15 + 0.5 + 0.25 = 1.9; rank 1: recv 0..0.05, F 1.9..3.0,
    # B ..5.1, send ..5.15, arrives 5.9; rank 0: recv 1.15..1.2, B 5.9..8.0
    assert step == pytest.approx(8.0)
    assert busy == [pytest.approx(3.3), pytest.approx(3.3)]


def test_closed_form_host_cost_adds_to_each_rank_per_microbatch() -> None:
    """1F1B on two balanced ranks: each rank's micro-batch gains 4 actions (F, B, a send, a receive) of the
    single-stage runtime, so the step gains (M + 1) times that (M steady-state micro-batches plus the fill)."""
    K, M, h = 2, 4, 1e-3
    closed = {"simulate_order": False}
    bare = predict("1f1b", balanced(K), K, microbatches=M, **closed)
    hosted = predict("1f1b", balanced(K, action_s=(("single-stage", h), ("multi-stage", 9.0))), K, microbatches=M,
                     **closed)  # fmt: skip
    assert hosted.step_s - bare.step_s == pytest.approx((M + 1) * 4 * h)


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_simulated_single_stage_host_cost_is_four_actions_per_microbatch(schedule) -> None:
    """Layers that cost nothing: each of the two ranks runs an F, a B, a send and a receive per micro-batch."""
    K, M = 2, 4
    costs = (("single-stage", 1e-3), ("multi-stage", 9.0))
    p = predict(schedule, Profile((0.0,) * 4, (0.0,) * 3, N, action_s=costs), K, microbatches=M)
    assert "simulated" in p.note
    assert p.rank_s == (pytest.approx(4 * M * 1e-3), pytest.approx(4 * M * 1e-3))


@pytest.mark.parametrize(("schedule", "per_microbatch"), [("interleaved-1f1b", 10), ("zero-bubble", 12)])
def test_simulated_host_cost_counts_every_action_of_torch_order(schedule, per_microbatch) -> None:
    """Layers that cost nothing: the busiest rank is busy for the host's cost of its actions, 1 ms each (K = 2:
    interleaved 1F1B has 2 F, 2 B and 6 sends or receives per micro-batch on a rank; zero bubble 2 F, 2 I, 2 W)."""
    K, M = 2, 4
    costs = (("single-stage", 9.0), ("multi-stage", 1e-3))
    p = predict(schedule, Profile((0.0,) * 8, (0.0,) * 7, N, action_s=costs), K, microbatches=M)
    assert "simulated" in p.note
    assert p.step_s >= per_microbatch * M * 1e-3 - 1e-12
    assert max(p.rank_s) == pytest.approx(per_microbatch * M * 1e-3)


def test_closed_form_and_simulation_count_the_same_actions() -> None:
    """Beyond the simulation's limit the closed form adds the same host cost per micro-batch as torch's order."""
    K, M = 2, 8
    prof = Profile((0.0,) * 8, (0.0,) * 7, N, action_s=(("multi-stage", 1e-3),))
    for schedule in ("interleaved-1f1b", "zero-bubble"):
        simulated = predict(schedule, prof, K, microbatches=M)
        closed = predict(schedule, prof, K, microbatches=M, simulate_order=False)
        assert max(closed.rank_s) == pytest.approx(max(simulated.rank_s))


def test_the_host_cost_is_absent_from_synthgrads_own_runtime() -> None:
    costs = (("single-stage", 1e-3), ("multi-stage", 1e-3))
    for schedule in ("stale", "decoupled", "model-parallel"):
        assert predict(schedule, balanced(2, action_s=costs), 2).step_s == predict(schedule, balanced(2), 2).step_s


def test_an_unknown_action_runtime_is_refused() -> None:
    with pytest.raises(ConfigError, match="action costs"):
        balanced(2, action_s=(("F", 1e-3),))
    with pytest.raises(ConfigError, match="action costs"):
        balanced(2, action_s=(("multi-stage", -1.0),))
