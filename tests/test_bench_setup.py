"""What the bench times (`experiments.bench_setup`): configs, devices and the mixing switches."""

from generalist_tf.experiments import bench_setup


def test_make_config_reads_a_flagfile_from_the_root_with_overrides():
    cfg = bench_setup.make_config("flags/smoke.cfg", epochs=2)
    assert cfg.optimisation.epochs == 2
    assert cfg.runtime.workdir.endswith("generalist_tf_bench")  # the bench writes nothing


def test_replicas_run_on_the_logical_cpus_without_a_gpu():
    devices = bench_setup.replica_devices()
    assert len(devices) == 2 and all("CPU" in d for d in devices)  # conftest: 2 logical CPUs


class FakeModel:
    """Records what a step does to the model's schedule."""

    def __init__(self):
        self.calls = []

    def stop_mixing(self):
        self.calls.append("stop")

    def set_schedule(self, weights, redistributing):
        self.calls.append(("schedule", tuple(weights), redistributing))

    def mix(self, weights, redistribute):
        self.calls.append(("mix", tuple(weights), redistribute))


def fake_trainer():
    model = FakeModel()
    return bench_setup.Trainer(model, lambda: model.calls.append("step"), None, None)


def test_with_mixing_hands_the_schedule_over_before_every_step():
    trainer = fake_trainer()
    run = bench_setup.with_mixing(trainer, ([0.5, 0.5], True))
    run()
    run()
    assert trainer.model.calls == [("schedule", (0.5, 0.5), True), "step"] * 2
    trainer = fake_trainer()
    bench_setup.with_mixing(trainer, None)()
    assert trainer.model.calls == ["stop", "step"]


def test_mixing_only_mixes_without_a_step():
    trainer = fake_trainer()
    bench_setup.mixing_only(trainer, ([1.0, 0.0], False))()
    assert trainer.model.calls == [("mix", (1.0, 0.0), False)]
