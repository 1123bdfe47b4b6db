"""Test launcher (a stand-in for GPUs): ``spa-recipe`` with accelerate's FSDP2 over gloo CPU processes.

accelerate turns FSDP on only over GPU-type process groups, so ``accelerate launch --config_file
configs/accelerate/fsdp.yaml`` gives plain data parallelism on a machine without GPUs. Launched by that same
command, this script keeps everything else real (the shipped config's FSDP_* settings, accelerate's FSDP2
preparation, torch's ``fully_shard`` on gloo, our trainers and checkpoints) and flips only that gate: when
accelerate's state comes up as MULTI_CPU it is marked FSDP, with the FSDP2 plugin accelerate builds from
the environment. Then it runs the CLI with the remaining arguments.

    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 2 tests/fsdp_on_cpu.py run RECIPE
"""

from __future__ import annotations

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu(self: AcceleratorState, *args: object, **kwargs: object) -> None:
    _accelerator_state_init(self, *args, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU:
        # Both shared states: every later AcceleratorState() copies PartialState's distributed_type.
        PartialState().distributed_type = DistributedType.FSDP
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = FullyShardedDataParallelPlugin()


AcceleratorState.__init__ = _fsdp_on_cpu  # type: ignore[method-assign]

if __name__ == "__main__":
    from spa_recipes.cli import main

    sys.argv = ["spa-recipe", *sys.argv[1:]]
    sys.exit(main())
