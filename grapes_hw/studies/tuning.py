"""The two phases of a study with ``[tune]``: the tuning groups and their runs, the values
chosen from finished tuning runs, and the study's seeds at those values.
"""

from __future__ import annotations

import hashlib

from grapes_hw.errors import ConfigError
from grapes_hw.studies.keys import key_fields, run_key
from grapes_hw.studies.spec import RunSpec, Study, _canon, label_text


def tune_group(spec: RunSpec, tune) -> str:
    """The tuning group of a study run: a hash of its key fields without seed and the tuned
    field (runs differing only in those share the tuned value)."""
    kf = key_fields(spec.config)
    kf.pop("seed", None)
    kf.pop(tune.field, None)
    return hashlib.sha256(_canon(kf).encode()).hexdigest()[:12]


def _group_label(spec: RunSpec, tune) -> dict:
    return {k: v for k, v in spec.label.items() if k not in ("seed", tune.field)}


def _linked_target(spec: RunSpec, tune, groups: dict[str, RunSpec]) -> str | None:
    """The group an lr-matched control takes its tuned value from (see tune.py)."""
    cfg = spec.config
    if tune.field != "lr" or not cfg.rule.lr_matched:
        return None
    target = RunSpec("", cfg.replace(lr_matched=False, grapes="propagating"), {})
    gid = tune_group(target, tune)
    return gid if gid in groups else None


def tuning_plan(study: Study) -> tuple[dict[str, RunSpec], dict[str, str], list[RunSpec]]:
    """``(groups, links, tuning runs)``: one template per group (its first run), the linked
    lr-matched groups (group -> the group whose value it takes) and every tuning run."""
    tune = study.tune
    groups: dict[str, RunSpec] = {}
    for s in study.runs:
        groups.setdefault(tune_group(s, tune), s)
    links = {g: t for g, s in groups.items()
             if (t := _linked_target(s, tune, groups)) is not None}
    runs: list[RunSpec] = []
    seen: set[str] = set()
    for seed in range(tune.seeds):  # seeds outermost, as in the study
        for gid, s in groups.items():
            if gid in links:
                continue
            for i, v in enumerate(tune.values):
                cfg = s.config.replace(seed=seed, **{tune.field: v},
                                          **tune.overrides())
                try:
                    cfg.check()
                except ConfigError as e:
                    raise ConfigError(f"tune.{e.field.lstrip('-').replace('-', '_')}",
                                      f"{e.message} (tuning run of "
                                      f"{label_text(_group_label(s, tune)) or 'base'})") from None
                k = run_key(cfg)
                if k in seen:
                    continue
                seen.add(k)
                label = {**_group_label(s, tune), tune.field: v, "seed": seed}
                runs.append(RunSpec(k, cfg, label, phase="tune",
                                    meta={"tune_group": gid, "tune_value": v,
                                          "tune_index": i}))
    return groups, links, runs


def tuning_choices(study: Study, done: dict[str, dict]) -> tuple[dict, list[RunSpec]]:
    """The value chosen per group from the finished tuning runs in ``done`` (groups whose
    tuning is incomplete are left out), and the tuning runs still to do."""
    from grapes_hw.studies.tune import Choice, choose

    groups, links, runs = tuning_plan(study)
    by_group: dict[str, dict[int, list[dict]]] = {}
    missing: list[RunSpec] = []
    for r in runs:
        rec = done.get(r.key)
        if rec is None:
            missing.append(r)
            continue
        by_group.setdefault(r.meta["tune_group"], {}).setdefault(
            r.meta["tune_index"], []).append(rec)
    incomplete = {r.meta["tune_group"] for r in missing}
    choices: dict[str, Choice] = {}
    for gid in groups:
        if gid in links or gid in incomplete:
            continue
        choices[gid] = choose(gid, study.tune.values, by_group.get(gid, {}),
                              study.tune.metric)
    for gid, target in links.items():
        if target in choices:
            c = choices[target]
            choices[gid] = Choice(gid, c.value, [], "lr-matched control: the value tuned for "
                                                    "SGD + GRAPES (propagating)", linked_to=target)
    return choices, missing


def final_runs(study: Study, choices: dict) -> tuple[list[RunSpec], int]:
    """The study's runs at their groups' chosen values (groups not yet tuned left out), and
    how many runs still wait for tuning."""
    out: list[RunSpec] = []
    waiting = 0
    for s in study.runs:
        gid = tune_group(s, study.tune)
        c = choices.get(gid)
        if c is None:
            waiting += 1
            continue
        cfg = s.config.replace(**{study.tune.field: c.value})
        cfg.check()
        out.append(RunSpec(run_key(cfg), cfg, dict(s.label), meta={"tune_group": gid}))
    return out, waiting


def tuning_report(study: Study, choices: dict) -> dict:
    """``tuning.json``: the [tune] table and, per group, its settings, curve and choice."""
    groups, links, _ = tuning_plan(study)
    return {"tune": study.tune.to_dict(),
            "groups": [{"group": gid, "label": _group_label(s, study.tune),
                        **(choices[gid].to_dict() if gid in choices else
                           {"value": None, "note": "tuning not finished"})}
                       for gid, s in groups.items()]}






