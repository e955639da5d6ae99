"""What `kompaktor run` prints: the outcome a newcomer reads in seconds (the metric with its
bound, the speed-up at each batch size, a search's winner, energy with how it was known), and
the plain progress lines a log file or a pipe gets instead of a live table."""

from __future__ import annotations

from typing import Any

import pytest

from kompaktor.api.status import (
    JobResult,
    OptimizationJobStatus,
    OutputRef,
    StageStatus,
    TrialRecord,
)
from kompaktor.display import ProgressLines, result_lines, summary
from kompaktor.metrics.energy import cpu_count
from kompaktor.plan.job import result_of

BENCH_METRICS = {
    "metric": 0.9889,
    "sizeBytes": 166093.0,
    "speedup": 11.4,
    "latencyBatch": 1.0,
    "speedup@1": 11.4,
    "speedup@16": 14.32,
    "p50Ms@16": 0.2,
}


def output(model: str) -> OutputRef:
    return OutputRef(uri=f"file:///a/{model}.onnx", digest=f"sha256:{model}")


def finished(**update: Any) -> OptimizationJobStatus:
    """A succeeded job whose last stage is a benchmark at batch 1 and 16."""
    bench = StageStatus(
        name="bench", type="benchmark", phase="Succeeded", metrics=BENCH_METRICS,
        energy_method="estimate", output=output("quantized"),
    )  # fmt: skip
    result = JobResult(
        uri="file:///a/model.onnx", metric=0.9889, baseline_metric=0.9889, speedup=11.4,
        size_ratio=0.068,
    )  # fmt: skip
    status = OptimizationJobStatus(
        phase="Succeeded", stages=[bench], result=result, cost_usd=0.0, energy_joules=805.7
    )
    return status.model_copy(update=update)


def test_the_result_names_the_metric_and_the_bound_it_had_to_keep() -> None:
    """It said `metric: 0.9889 (input model 0.9889)`: which metric, and what bound?"""
    lines = result_lines(finished(), metric="accuracy", max_drop=0.01)
    assert "accuracy 0.9889 (input 0.9889, maxDrop 0.01)" in lines


def test_the_speedup_is_given_at_every_batch_size_the_benchmark_timed() -> None:
    """Only batch 1 was printed, though the benchmark had timed batch 16 too."""
    lines = result_lines(finished())
    assert "speed-up over the input model: 11.40x at batch 1, 14.32x at batch 16" in lines
    assert "size: 162.2 KiB, 0.068x of the input model" in lines


def test_a_benchmark_before_the_last_stage_lends_it_no_figures() -> None:
    """bench, then quantize: the headline named the int8 model with the speed-up (1.00x) and
    size ratio the benchmark had measured on the float model it was given."""
    quantize_metrics = {
        "metric": 0.96, "sizeBytes": 28017.0, "sizeBytesReference": 97671.0, "latencyMs": 0.011,
    }  # fmt: skip
    bench = StageStatus(
        name="bench", type="benchmark", phase="Succeeded", output=output("float"),
        metrics={"speedup": 1.0, "sizeRatio": 1.0, "latencyMs": 0.0276, "speedup@1": 1.0},
    )  # fmt: skip
    quantize = StageStatus(
        name="quantize", type="quantize", phase="Succeeded", output=output("int8"),
        metrics=quantize_metrics,
    )  # fmt: skip
    result = result_of([bench, quantize])
    assert result is not None and result.uri == "file:///a/int8.onnx"
    assert result.speedup is None and result.latency_ms == 0.011
    assert result.size_ratio == pytest.approx(28017 / 97671)
    lines = result_lines(OptimizationJobStatus(phase="Succeeded", stages=[bench, quantize],
                                               result=result))  # fmt: skip
    assert (
        "speed-up over the input model: not measured (benchmark 'bench' timed the model before "
        "the stages after it; end the job with a benchmark stage)"
    ) in lines
    assert "size: 27.4 KiB, 0.287x of the input model" in lines
    alone = OptimizationJobStatus(
        phase="Succeeded", stages=[quantize], result=result_of([quantize])
    )
    assert (
        "speed-up over the input model: not measured (add a benchmark stage at the end of the job)"
        in result_lines(alone)
    )
    timed = bench.model_copy(update={"output": output("int8"), "metrics": BENCH_METRICS})
    assert result_of([quantize, timed]) == result_of([timed]) != result


def test_a_slower_result_and_an_int8_slower_than_float_say_so() -> None:
    """`speed-up 0.77x` read as a gain, and an int8 model slower than the float ONNX it came
    from was not mentioned: the whole gain over the torch input was the runtime's."""
    slow = {**BENCH_METRICS, "speedup@1": 0.77, "speedupMax@1": 0.78, "speedup@16": 0.99,
            "speedupMax@16": 1.02}  # fmt: skip
    quantize = StageStatus(
        name="quantize", type="quantize", phase="Succeeded", output=output("quantized"),
        metrics={"speedupOverFloat": 0.764},
    )  # fmt: skip
    status = finished()
    bench = status.stages[0].model_copy(update={"metrics": slow})
    lines = result_lines(status.model_copy(update={"stages": [quantize, bench]}))
    assert "speed-up over the input model: 0.77x (slower) at batch 1, 0.99x at batch 16" in lines
    assert (
        "note: quantize's int8 model runs at 0.76x the speed of its float ONNX at batch 1: int8 "
        "costs time here, and any speed-up over a torch input is ONNX Runtime's"
    ) in lines


def test_json_gives_the_trials_and_each_search_winner() -> None:
    """`--json` left out what the text summary says of a search: its trials and winner."""
    status = finished(trials=[trial(0, "Complete"), trial(1, "Complete")])
    details = {"bestTrial": 1, "bestParams": {"lr": 0.001}, "trials": [{"number": 0}]}
    dumped = summary("demo", status, "file:///a", {"tune": details})
    assert [t["number"] for t in dumped["trials"]] == [0, 1]
    assert dumped["searches"] == {"tune": {"bestTrial": 1, "bestParams": {"lr": 0.001}}}


def test_a_search_names_its_winning_trial_and_params() -> None:
    """One objective printed nothing of the search: which trial won, with what params."""
    details = {
        "bestTrial": 1,
        "bestParams": {"lr": 1.185420912915879e-05, "weightDecay": 9.2e-05, "mode": "static"},
        "selection": "trial 1 has the best accuracy ...",
        "trials": [{"number": n} for n in range(6)],
    }
    lines = result_lines(finished(), {"tune": details}, metric="accuracy")
    assert "tune: trial 1 of 6 won: lr=1.185e-05, weightDecay=9.2e-05, mode=static" in lines


def test_estimated_energy_says_so_and_what_it_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`energy: 805.7 J` read as a measurement; locally it is 10 W per busy core x CPU time.
    A cost of 0 (no pool has a price locally) is left out."""
    monkeypatch.setenv("KOMPAKTOR_POOL_WATTS", str(12.5 * cpu_count()))
    lines = result_lines(finished())
    assert lines[-1] == "energy: 806 J (estimated: 12.5 W per busy core x CPU time)"
    measured = finished(stages=[StageStatus(name="b", type="benchmark", energy_method="rapl")])
    assert result_lines(measured)[-1] == "energy: 806 J (measured: RAPL)"
    priced = finished(cost_usd=0.25, energy_joules=1500.0)
    assert result_lines(priced)[-1].startswith("cost: 0.2500 USD, energy: 1.5 kJ (estimated: ")
    rerun = finished(energy_joules=0.0)
    rerun = rerun.model_copy(
        update={"stages": [s.model_copy(update={"cached": True}) for s in rerun.stages]}
    )
    assert result_lines(rerun)[-1] == "energy: 0.0 J (every stage came from the cache)"


def stage(phase: str, **update: Any) -> StageStatus:
    fields: dict[str, Any] = {"name": "prune", "type": "prune", "phase": phase, **update}
    return StageStatus.model_validate(fields)


def trial(number: int, state: str, **update: Any) -> TrialRecord:
    fields = {"stage": "tune", "number": number, "params": {"lr": 0.001}, "state": state}
    return TrialRecord.model_validate({**fields, **update})


def test_progress_is_one_line_per_event_as_it_happens() -> None:
    """Redirected (`> run.log 2>&1`), a run printed nothing until its end: each stage's start,
    finish with its figure, retry and failure, and each trial's end is a line, once."""
    events = ProgressLines("accuracy")
    times = {"start_time": "2026-01-01T00:00:00Z", "completion_time": "2026-01-01T00:00:12Z"}
    done = {"metric": 0.9833, "sizeBytes": 626688.0}
    steps = [
        [stage("Pending")],
        [stage("Running", attempts=1)],
        [stage("Running", attempts=1)],  # nothing new: nothing printed
        [stage("Retrying", attempts=1, message="stage (prune): killed (OOM)")],
        [stage("Running", attempts=2)],
        [stage("Succeeded", attempts=2, metrics=done, **times)],
    ]
    printed = [events(OptimizationJobStatus(stages=stages)) for stages in steps]
    assert printed == [
        [],
        ["prune (prune): started"],
        [],
        ["prune (prune): attempt 1 failed, retrying: stage (prune): killed (OOM)"],
        ["prune (prune): started, attempt 2"],
        ["prune (prune): succeeded in 12s: accuracy 0.9833, 612.0 KiB"],
    ]
    resumed = [stage("Succeeded", metrics=done, **times), stage("Running").model_copy(
        update={"name": "quantize", "type": "quantize"})]  # fmt: skip
    assert ProgressLines("accuracy")(OptimizationJobStatus(stages=resumed)) == [
        "prune (prune): succeeded in an earlier run: accuracy 0.9833, 612.0 KiB",
        "quantize (quantize): started",
    ]
    ungated = stage("Succeeded", metrics=done, message="not gated: accuracy 0.9833 is …")
    fresh = ProgressLines("accuracy")
    fresh(OptimizationJobStatus())
    assert fresh(OptimizationJobStatus(stages=[ungated])) == [
        "prune (prune): succeeded: accuracy 0.9833, 612.0 KiB (not gated: accuracy 0.9833 is …)"
    ]
    failed = stage("Failed", attempts=3, message="stage (prune): out of cheese")
    assert events(OptimizationJobStatus(stages=[failed])) == [
        "prune (prune): failed: stage (prune): out of cheese"
    ]


def test_progress_reports_each_trial_that_finishes_not_those_restored() -> None:
    events = ProgressLines("accuracy")
    restored = trial(0, "Complete", metrics={"metric": 0.97})
    assert events(OptimizationJobStatus(trials=[restored, trial(1, "Running")])) == []
    later = [
        restored,
        trial(1, "Complete", metrics={"metric": 0.98, "valMetric": 0.975}),
        trial(2, "Pruned"),
        trial(3, "Failed", message="stage (train): diverged"),
    ]
    assert events(OptimizationJobStatus(trials=later)) == [
        "tune: trial 1 complete: validation accuracy 0.9750; lr=0.001",
        "tune: trial 2 pruned; lr=0.001",
        "tune: trial 3 failed: stage (train): diverged; lr=0.001",
    ]


def test_a_searchs_last_trial_is_reported_before_the_search_ends() -> None:
    """The digits run printed `tune (hpo): succeeded` and then its last trial's line."""
    events = ProgressLines("accuracy")
    tune = StageStatus(name="tune", type="hpo", phase="Running")
    events(OptimizationJobStatus(stages=[tune], trials=[trial(5, "Running")]))
    done = tune.model_copy(update={"phase": "Succeeded", "metrics": {"bestTrial": 5.0}})
    last = trial(5, "Complete", metrics={"metric": 0.99})
    assert events(OptimizationJobStatus(stages=[done], trials=[last])) == [
        "tune: trial 5 complete: accuracy 0.9900; lr=0.001",
        "tune (hpo): succeeded: trial 5 won",
    ]


def test_a_finished_stage_shows_its_key_figure() -> None:
    """A benchmark's is its speed-up, a search's its winner, a cached stage says so."""
    events = ProgressLines("accuracy")
    bench = StageStatus(
        name="bench", type="benchmark", phase="Succeeded", cached=True, metrics=BENCH_METRICS
    )
    tune = StageStatus(
        name="tune", type="hpo", phase="Succeeded", cached=True,
        metrics={"bestTrial": 1.0, "metric": 0.9889, "sizeBytes": 2411724.0},
    )  # fmt: skip
    assert events(OptimizationJobStatus(stages=[tune, bench])) == [
        "tune (hpo): succeeded (cached): trial 1 won, accuracy 0.9889, 2.3 MiB",
        "bench (benchmark): succeeded (cached): speed-up 11.40x at batch 1",
    ]
