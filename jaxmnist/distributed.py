"""Where a run lives: one device, a mesh of local devices, or a mesh over the devices of several processes.

    python -m jaxmnist.train --preset fast --devices 2                      # data parallel on 2 local devices
    python -m jaxmnist.train --preset fast --num-processes 2 --process-id 0 --coordinator 127.0.0.1:1234 &
    python -m jaxmnist.train --preset fast --num-processes 2 --process-id 1 --coordinator 127.0.0.1:1234

Data parallelism the jit way: the state and the uint8 dataset are replicated on every device of a 1-D mesh
('data'), and the batch axis of each step's indices is sharded over it; the program is the one-device program,
which XLA partitions (BatchNorm's batch statistics and the gradients become all-reduces over the mesh). So the
global batch, and the results up to the order of float32 sums, are those of one device. Each process computes
only its own shard of the indices, from the same (seed, epoch) as every other: nothing is fed per step.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxmnist.cli import UsageError

AXIS = "data"


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """jax.distributed from the flags, else from the usual environment (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID), else from a cluster jax detects itself (a SLURM job of several tasks).
    Does nothing for a single process. On CPUs, collectives go through gloo."""

    def env(name, kind=str):
        value = os.environ.get(name)
        try:
            return None if value in (None, "") else kind(value)
        except ValueError:
            raise UsageError(f"{name}={value!r} is not a {kind.__name__}") from None

    coordinator = coordinator or env("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes if num_processes is not None else env("JAX_NUM_PROCESSES", int)
    process_id = process_id if process_id is not None else env("JAX_PROCESS_ID", int)
    given = (coordinator, num_processes, process_id)
    cluster = (env("SLURM_NTASKS", int) or 1) > 1
    if all(g is None for g in given) and not cluster:
        return
    if any(g is None for g in given) and not cluster:
        raise UsageError("--coordinator, --num-processes and --process-id go together")
    if num_processes is not None and not 0 <= (process_id or 0) < num_processes:
        raise UsageError(f"--process-id {process_id} is not in [0, {num_processes})")
    if jax.config.jax_platforms in (None, "", "cpu") and not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=120)


def is_main() -> bool:
    """Process 0: the one that prints and writes logs."""
    return jax.process_index() == 0


@dataclasses.dataclass(frozen=True)
class Placement:
    """The devices a run uses: `mesh` None is the default device alone (the one-device programs, unchanged)."""

    mesh: Mesh | None = None

    @classmethod
    def over(cls, devices: int | None, batch_size: int | None = None) -> "Placement":
        """A 1-D mesh over `devices` devices; None: all of them, or as many as split `batch_size` evenly."""
        available = jax.device_count()
        if devices is None:
            devices = available
            while batch_size and batch_size % devices:
                devices -= 1
        if not 1 <= devices <= available:
            raise UsageError(f"--devices {devices}: this run sees {available} device(s) ({jax.devices()[0].platform})")
        if devices == 1:
            return cls()
        # Auto axes: XLA's partitioner places what the one-device program leaves open (jax 0.10 defaults to
        # Explicit axes, which would ask every gather for an out_sharding).
        auto = (jax.sharding.AxisType.Auto,)
        return cls(jax.make_mesh((devices,), (AXIS,), auto, devices=jax.devices()[:devices]))

    @property
    def size(self) -> int:
        return 1 if self.mesh is None else self.mesh.size

    def replicated(self) -> NamedSharding | None:
        return None if self.mesh is None else NamedSharding(self.mesh, P())

    def batch(self, leading: int = 0) -> NamedSharding | None:
        """An array whose axis `leading` is the batch: that axis over the mesh."""
        return None if self.mesh is None else NamedSharding(self.mesh, P(*[None] * leading, AXIS))

    def replicate(self, tree):
        """`tree` (the same values in every process) as global arrays replicated on the mesh."""
        if self.mesh is None:
            return tree
        sharding = self.replicated()
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise UsageError(f"--batch-size {batch_size} does not split over {self.size} devices")
