"""Held-out tuning of GRAFT / P-GRAFT (prompts make_prompt_set(seed=555), never the eval prompts): python benchmarks/shapes_finetune_tune.py METHOD:LR:STEPS:CFG_DROP[:RULE] ... (writes runs/tune_ft2.json)."""
import json, sys, time, torch
from pathlib import Path
sys.path.insert(0, 'benchmarks')
torch.set_num_threads(1)
from shapes_scaling import run_config
import steer
from steer.shapes import load_pipeline, load_reward, make_prompt_set
from steer.train import pgraft
from steer.train.finetune import load_result
from steer.train.noise_aware import load_prompt_source
recs = make_prompt_set(per_task=16, seed=555)
train_prompts = load_prompt_source(None, 777, 32)
out = Path('runs/tune_ft2.json'); res = json.loads(out.read_text()) if out.exists() else {}
def ev(result):
    pipe = load_pipeline(); pipe.set_progress_bar_config(disable=True)
    if result: load_result(pipe, result)
    r = run_config(steer.wrap(pipe, method='best_of_n', reward=load_reward()), recs, 2, 25, 5.0, 1, 16)
    return {'accuracy': r['accuracy'], 'reward': r['mean_reward'], 'correct': r['correct']}
if 'base' not in res:
    res['base'] = ev(None); out.write_text(json.dumps(res))
print('base', res['base']['accuracy'], res['base']['reward'], flush=True)
for spec in sys.argv[1:]:
    parts = spec.split(':'); method, lr, steps, drop = parts[:4]; rule = ':'.join(parts[4:]) or 'top_k:1'; lr = float(lr); steps = int(steps); drop = float(drop)
    if spec in res: print(spec, res[spec]['accuracy'], res[spec]['reward']); continue
    n_i = int(method[6:]) if method.startswith('pgraft') else None
    cfg = pgraft.PGraftConfig(method='pgraft' if n_i else 'graft', n_i=n_i, lr=lr, train_steps=steps, cfg_drop=drop, accept=rule)
    pipe = load_pipeline(); pipe.set_progress_bar_config(disable=True)
    t = time.time()
    final = pgraft.train(pipe, load_reward(), train_prompts, cfg, f'runs/tune_ft2/{spec.replace(":", "_")}', progress=False,
                         shared_samples='runs/finetune/sd_round0_samples.pt')
    res[spec] = ev(final); res[spec]['train_s'] = time.time() - t
    out.write_text(json.dumps(res))
    print(spec, res[spec]['accuracy'], res[spec]['reward'], flush=True)
