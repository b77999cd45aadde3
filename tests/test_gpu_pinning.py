"""GPU pinning and GPU telemetry without a GPU: a fake NVML on a host of mixed GPU models.

A worker must train on the GPU its telemetry reports (CUDA numbers GPUs fastest first unless told
CUDA_DEVICE_ORDER=PCI_BUS_ID; NVML numbers them in PCI bus order), must only use GPUs an inherited
CUDA_VISIBLE_DEVICES gives the launcher, and one NVML query a GPU does not support (utilization under MIG,
on some virtual GPUs) must not throw away the rest of the sample nor warn on every heartbeat.
"""
from __future__ import annotations

import logging
import signal
import sys
from types import SimpleNamespace

import pynvml
import pytest

from worker import launch, telemetry

# NVML's view of the fake host, in PCI bus order: a slow card first, so CUDA's default order would differ.
HOST_GPUS = [("GPU-aaaaaaaa-0000-0000-0000-000000000000", "NVIDIA RTX A4000"),
             ("GPU-bbbbbbbb-1111-1111-1111-111111111111", "NVIDIA H100 80GB HBM3"),
             ("GPU-cccccccc-2222-2222-2222-222222222222", "NVIDIA H100 80GB HBM3")]


def fake_pynvml(gpus=HOST_GPUS, unsupported: tuple[str, ...] = ()) -> SimpleNamespace:  # noqa: ANN001
    """A pynvml stand-in for `gpus` (NVML index = position); the queries named in `unsupported` raise
    NVMLError_NotSupported, as on a MIG instance or some virtual GPUs."""
    calls: dict[str, int] = {}

    def query(name, answer):  # noqa: ANN001, ANN202
        def call(*args):  # noqa: ANN002, ANN202
            calls[name] = calls.get(name, 0) + 1
            if name in unsupported:
                raise pynvml.NVMLError_NotSupported()
            return answer(*args)
        return call

    def handle(index):  # noqa: ANN001, ANN202
        if not 0 <= index < len(gpus):
            raise pynvml.NVMLError_InvalidArgument()
        return index

    return SimpleNamespace(
        calls=calls, NVML_TEMPERATURE_GPU=0, NVMLError=pynvml.NVMLError,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=handle,
        nvmlDeviceGetUUID=query("nvmlDeviceGetUUID", lambda h: gpus[h][0].encode()),
        nvmlDeviceGetName=query("nvmlDeviceGetName", lambda h: gpus[h][1].encode()),
        nvmlDeviceGetMemoryInfo=query("nvmlDeviceGetMemoryInfo",
                                      lambda h: SimpleNamespace(used=(h + 1) * 2**30, total=80 * 2**30)),
        nvmlDeviceGetUtilizationRates=query("nvmlDeviceGetUtilizationRates", lambda h: SimpleNamespace(gpu=90 + h)),
        nvmlDeviceGetTemperature=query("nvmlDeviceGetTemperature", lambda h, kind: 60 + h))


@pytest.fixture
def nvml(monkeypatch):  # noqa: ANN001, ANN201
    """The fake NVML as `import pynvml` in worker.gpus and as telemetry's initialised module; no inherited
    CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER unless a test sets one."""
    fake = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    return fake


def spawned_envs(monkeypatch, specs: list[launch.WorkerSpec]) -> dict[str, dict[str, str]]:  # noqa: ANN001
    """The environment each worker process of `specs` is started with (Popen is faked)."""
    envs: dict[str, dict[str, str]] = {}

    def fake_popen(cmd, env, **kwargs):  # noqa: ANN001, ANN003, ANN202
        envs[cmd[cmd.index("--hostname") + 1]] = env
        return SimpleNamespace(pid=1, poll=lambda: None)

    monkeypatch.setattr(launch.subprocess, "Popen", fake_popen)
    sup = launch.Supervisor(specs)
    for spec in specs:
        sup._spawn(spec)
    return envs


# --- pinning: CUDA's numbering must be NVML's ------------------------------------------------------------

def test_each_gpu_worker_is_pinned_in_pci_bus_order_to_the_gpu_its_telemetry_reads(nvml, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # the launcher's own order must not leak through
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    specs = launch.worker_specs(launch.detect_gpus())
    envs = spawned_envs(monkeypatch, specs)
    assert len(envs) == 3
    for spec in specs:
        env = envs[spec.name]
        assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID", f"{spec.name}: CUDA would number GPUs fastest first"
        assert env["CUDA_VISIBLE_DEVICES"] == env["NCSWEEP_GPU_INDEX"] == str(spec.gpu), env
    cpu = launch.worker_specs([], cpu_workers=1)[0]
    assert cpu.env["CUDA_VISIBLE_DEVICES"] == ""


# --- an inherited CUDA_VISIBLE_DEVICES: only the GPUs it names get workers --------------------------------

def test_without_cuda_visible_devices_every_gpu_gets_a_worker(nvml) -> None:  # noqa: ANN001
    assert launch.detect_gpus() == [0, 1, 2]


@pytest.mark.parametrize(("inherited", "expected"), [
    ("2,1", [2, 1]),                                            # indices, in their order
    ("2", [2]),
    (" 1 , 2 ", [1, 2]),
    ("GPU-cccccccc-2222-2222-2222-222222222222", [2]),          # a full UUID
    ("GPU-bbbbbbbb,0", [1, 0]),                                 # a unique UUID prefix, then an index
    ("", []), ("-1", []), (" ", []),                            # no GPU at all
    ("1,-1,2", [1]),                                            # like CUDA: the list ends at an invalid entry
    ("0,7,2", [0]),                                             # no GPU 7 on this host
    ("GPU-dddddddd", []),                                       # an unknown UUID
    ("MIG-bbbbbbbb-1111-1111-1111-111111111111", []),         # MIG instances cannot be pinned by the launcher
    ("1,1", [1]),                                               # one worker per GPU
])
def test_an_inherited_cuda_visible_devices_limits_the_gpus(nvml, monkeypatch, inherited, expected):  # noqa: ANN001
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", inherited)
    assert launch.detect_gpus() == expected, f"CUDA_VISIBLE_DEVICES={inherited!r}"


def test_each_allotted_gpu_gets_exactly_one_worker_pinned_to_it(nvml, monkeypatch):  # noqa: ANN001
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cccccccc-2222-2222-2222-222222222222,GPU-bbbbbbbb")
    specs = launch.worker_specs(launch.detect_gpus())
    envs = spawned_envs(monkeypatch, specs)
    assert sorted(env["CUDA_VISIBLE_DEVICES"] for env in envs.values()) == ["1", "2"]
    assert all(env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for env in envs.values())


def test_explicit_gpus_outside_an_inherited_cuda_visible_devices_are_refused(nvml, monkeypatch):  # noqa: ANN001
    started: list[list[int]] = []
    monkeypatch.setattr(launch.Supervisor, "start", lambda self: started.append([s.gpu for s in self.specs]) or self)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    with pytest.raises(ValueError, match=r"CUDA_VISIBLE_DEVICES='1,2'.*\[1, 2\].*got \[0\]"):
        launch.start([0, 1])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="got \\[2\\]"):
        launch.start([2])
    assert started == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    launch.start([2])
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    launch.start([0])  # nothing inherited: any GPU may be asked for
    assert started == [[2], [0]]


def test_index_entries_on_a_mixed_host_warn_unless_the_order_is_pci_bus_id(nvml, monkeypatch, caplog):  # noqa: ANN001
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with caplog.at_level(logging.WARNING, logger="worker.launch"):
        assert launch.detect_gpus() == [1]
    assert "PCI bus order" in caplog.text and "1 (NVIDIA H100 80GB HBM3)" in caplog.text
    caplog.clear()
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    with caplog.at_level(logging.WARNING, logger="worker.launch"):
        assert launch.detect_gpus() == [1]
    assert caplog.text == ""


def test_the_worker_reports_the_physical_gpu_it_was_given(nvml, monkeypatch):  # noqa: ANN001
    """Launcher -> worker environment -> runner.gpu_index -> telemetry: the same physical GPU end to end."""
    from worker.runner import gpu_index

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-cccccccc-2222-2222-2222-222222222222")
    [spec] = launch.worker_specs(launch.detect_gpus())
    for key, value in spec.env.items():
        monkeypatch.setenv(key, value)
    snap = telemetry.sample(gpu_index())
    assert (snap["gpu_index"], snap["device"], snap["temperature_c"]) == (2, "cuda:2", 62.0)
    assert snap["memory_used"] == 3 * 2**30  # NVML's GPU 2, the one CUDA_VISIBLE_DEVICES=2 in PCI order selects


def test_detect_gpus_without_a_driver_is_empty(monkeypatch):  # noqa: ANN001
    broken = SimpleNamespace(nvmlInit=lambda: (_ for _ in ()).throw(pynvml.NVMLError_LibraryNotFound()))
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert launch.detect_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert launch.detect_gpus() == []


# --- telemetry: one unsupported NVML field costs that field only -----------------------------------------

def test_unsupported_utilization_keeps_the_rest_of_the_gpu_sample(monkeypatch):  # noqa: ANN001
    fake = fake_pynvml(unsupported=("nvmlDeviceGetUtilizationRates",))
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake)
    monkeypatch.setattr(telemetry, "_UNREADABLE_GPU_FIELDS", set(), raising=False)
    snap = telemetry.sample(1)
    assert snap == {"device": "cuda:1", "gpu_index": 1, "gpu_name": "NVIDIA H100 80GB HBM3", "util_percent": None,
                    "memory_used": 2 * 2**30, "memory_total": 80 * 2**30, "temperature_c": 61.0}


@pytest.mark.parametrize("unsupported", [
    ("nvmlDeviceGetMemoryInfo",), ("nvmlDeviceGetName",), ("nvmlDeviceGetTemperature",),
    ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature"),
])
def test_each_gpu_field_is_read_on_its_own(monkeypatch, unsupported):  # noqa: ANN001
    fake = fake_pynvml(unsupported=unsupported)
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake)
    monkeypatch.setattr(telemetry, "_UNREADABLE_GPU_FIELDS", set(), raising=False)
    snap = telemetry.sample(0)
    assert snap["device"] == "cuda:0" and snap["gpu_index"] == 0
    field_of = {"nvmlDeviceGetMemoryInfo": ("memory_used", "memory_total"), "nvmlDeviceGetName": ("gpu_name",),
                "nvmlDeviceGetTemperature": ("temperature_c",), "nvmlDeviceGetUtilizationRates": ("util_percent",)}
    missing = {f for query in unsupported for f in field_of[query]}
    assert {k for k, v in snap.items() if v is None} == missing, snap


def test_an_unsupported_field_warns_once_per_process_not_every_heartbeat(monkeypatch, caplog):  # noqa: ANN001
    fake = fake_pynvml(unsupported=("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature"))
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake)
    monkeypatch.setattr(telemetry, "_UNREADABLE_GPU_FIELDS", set(), raising=False)
    with caplog.at_level(logging.WARNING, logger="worker.telemetry"):
        snaps = [telemetry.sample(0) for _ in range(5)]
    assert all(s["device"] == "cuda:0" and s["memory_used"] == 2**30 for s in snaps)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any("util_percent" in w and "GPU 0" in w for w in warnings)
    assert any("temperature_c" in w for w in warnings)
    assert fake.calls["nvmlDeviceGetUtilizationRates"] == 5  # still asked each beat (cheap), only not logged


def test_a_gpu_nvml_cannot_reach_still_falls_back_to_cpu_telemetry(monkeypatch):  # noqa: ANN001
    fake = fake_pynvml()
    monkeypatch.setattr(telemetry, "_nvml", lambda: fake)
    assert telemetry.sample(9)["device"] == "cpu"  # no GPU 9: the handle itself fails


def test_ncsweep_up_refuses_gpus_outside_the_allotted_ones_before_starting_anything(nvml, monkeypatch, tmp_path,
                                                                                  capsys):  # noqa: ANN001
    from service import embedded

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    home = tmp_path / "home"
    assert embedded.main(home, example=False, keep_running=False, gpus=[0]) == 1
    out = capsys.readouterr().out
    assert "error:" in out and "got [0] outside it" in out and "Traceback" not in out
    assert not home.exists()  # no lock, database, Redis or API was started
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # main() put the caller's handler back


def test_ncsweep_worker_names_gpus_outside_the_allotted_ones_without_a_traceback(nvml, monkeypatch, capsys):  # noqa: ANN001
    from service import cli

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    monkeypatch.setattr(launch.Supervisor, "start", lambda self: pytest.fail("no worker may start"))
    assert cli.main(["worker", "--gpus", "0"]) == 2
    err = capsys.readouterr().err
    assert "--gpus" in err and "got [0] outside it" in err and "Traceback" not in err


@pytest.mark.parametrize("gpus, says", [([0, 0], "got 0 more than once"),
                                        ([1, 5], "got 5, which this host does not have")])
def test_ncsweep_up_refuses_a_gpu_twice_or_one_the_host_lacks(nvml, tmp_path, capsys, gpus, says):  # noqa: ANN001
    from service import embedded

    home = tmp_path / "home"
    assert embedded.main(home, example=False, keep_running=False, gpus=gpus) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"error: --gpus {','.join(map(str, gpus))}: " in out and says in out, out
    assert "available GPUs: 0, 1, 2" in out and "Traceback" not in out
    assert not home.exists()  # refused before anything started


def test_ncsweep_worker_refuses_a_gpu_twice_or_one_the_host_lacks(nvml, monkeypatch, capsys):  # noqa: ANN001
    from service import cli

    monkeypatch.setattr(launch.Supervisor, "start", lambda self: pytest.fail("no worker may start"))
    for gpus, says in (("0,0", "got 0 more than once"), ("7", "got 7, which this host does not have")):
        assert cli.main(["worker", "--gpus", gpus]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "--gpus" in err and says in err and "available GPUs: 0, 1, 2" in err, err


def test_without_a_gpu_any_gpus_option_is_refused(monkeypatch):  # noqa: ANN001
    from worker import gpus as worker_gpus

    monkeypatch.setattr(worker_gpus, "nvml_gpus", lambda: None)  # where detect_gpus looks it up
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(launch.GpuSelectionError, match=r"got 0, which this host does not have; available GPUs: none"):
        launch.check_gpu_selection([0])


def test_the_supervisor_refuses_two_workers_of_one_name_before_starting_any(monkeypatch):  # noqa: ANN001
    spawned = []
    monkeypatch.setattr(launch.Supervisor, "_spawn", lambda self, spec: spawned.append(spec.name))
    spec = launch.worker_specs([], cpu_workers=1)[0]
    with pytest.raises(ValueError, match="expected one worker per name, got ncsweep-cpu0@.* twice"):
        launch.Supervisor([spec, spec]).start()
    assert spawned == []
