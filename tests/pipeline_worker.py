"""accelerate-launched worker: train the :mod:`_pipeline_case` set-ups with :class:`PipelineTrainer`.

Usage: ``pipeline_worker.py OUT_DIR CASES_JSON``. Each case is ``{name, objective, window, split, micro,
resume_at}``; with ``resume_at`` the run stops after that many steps (a checkpoint every 2 steps) and a
fresh trainer resumes it. Rank 0 writes ``OUT_DIR/<name>.safetensors`` (the assembled model) and
``OUT_DIR/results.json`` (per-step losses of every stage, eval metrics, what each stage holds).
"""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pipeline_case import EPOCHS, build, capture_losses  # noqa: E402

from timm_ff.pipeline import PipelineTrainer  # noqa: E402


def make_trainer(acc, case, out: Path, max_train_steps=0, checkpoint_steps=0):
    parts = build(case['objective'], acc.device)
    return PipelineTrainer(accelerator=acc, **parts, epochs=EPOCHS, output_dir=out, split=[tuple(r) for r in case['split']],
                           window=case['window'], local_backward='per_unit', clip_grad=1.0, log_every=1,
                           max_train_steps=max_train_steps, checkpoint_steps=checkpoint_steps, progress=False,
                           micro_batches=case.get('micro') or None, timeout_s=60)


def holdings(trainer) -> dict:
    """Which units' tensors this stage holds, and which parameters its optimiser steps."""
    a, b = trainer.unit_range
    units = trainer.model.local_units()
    real = [u for u, unit in enumerate(units) if all(t.device.type != 'meta' for t in unit.state_dict().values())]
    meta = [u for u, unit in enumerate(units) if all(t.device.type == 'meta' for t in unit.state_dict().values())]
    own_params = {id(p) for u in range(a, b) for p in units[u].parameters()}
    if trainer.last and trainer.fusion_trained:
        own_params |= {id(p) for p in trainer.model.fusion.parameters()}
    stepped = {id(p) for g in trainer.optimizer.param_groups for p in g['params']}
    trainer.own_param_ids = own_params
    return dict(rank=trainer.rank, units=[a, b], real=real, meta=meta, optimizer_is_own=stepped == own_params)


def state_is_own(trainer) -> bool:
    state_params = {id(p) for p in trainer.optimizer.state}
    return bool(state_params) and state_params == trainer.own_param_ids


def main():
    out, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
    torch.set_num_threads(1)
    acc = Accelerator(cpu=True)
    assert acc.num_processes == 2, acc.num_processes
    results = {}
    for case in cases:
        run = out / case['name']
        if case.get('resume_at'):
            first = make_trainer(acc, case, run, max_train_steps=case['resume_at'], checkpoint_steps=2)
            first.fit()
        trainer = make_trainer(acc, case, run)
        losses = capture_losses(trainer, trainer.unit_range[0])
        held = holdings(trainer)  # before training: what the stage holds and steps
        metrics = trainer.fit(resume=str(run) if case.get('resume_at') else None)
        held['optimizer_state_is_own'] = state_is_own(trainer)  # after training (rank 0 then holds the assembled model)
        everything = [None, None]
        dist.all_gather_object(everything, dict(losses=losses, held=held))
        if acc.is_main_process:
            save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(out / f"{case['name']}.safetensors"))
            merged = {}
            for part in everything:
                merged.update(part['losses'])
            results[case['name']] = dict(losses=merged, held=[p['held'] for p in everything],
                                         history=[dict(accuracy=h['accuracy'], unit_accuracy=h['unit_accuracy'])
                                                  for h in metrics['history']],
                                         epoch_loss=[h['train_loss'] for h in metrics['history']],
                                         accuracy=metrics['accuracy'], fusion_check=metrics['fusion_check'],
                                         global_step=metrics['global_step'], pipeline=metrics['pipeline'])
    if acc.is_main_process:
        (out / 'results.json').write_text(json.dumps(results, indent=1))
    acc.wait_for_everyone()


if __name__ == '__main__':
    main()
