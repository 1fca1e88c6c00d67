"""``steerc inspect``: print an engine's manifest and rewritten attention sites."""

from __future__ import annotations

import json
from pathlib import Path

from steerc.cli.common import analysis_line, deploy_lines, rich_console, verify_line

__all__ = ["add_inspect_parser", "cmd_inspect"]


def cmd_inspect(args) -> int:
    from steerc.build import read_manifest

    manifest = read_manifest(Path(args.engine), check_files=not args.no_hash_check)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    console = rich_console()
    g = manifest["geometry"]
    console.print(f"[bold]{args.engine}[/]: steerc engine v{manifest['format_version']} (steerc {manifest['steerc_version']})")
    src = manifest["source"]
    console.print(f"  source    {src['spec']} [{src['kind']}] sha256 {src['sha256'][:16]}…")
    console.print(f"  model     {manifest['architecture']} ({manifest['model_type']}), dtype {manifest['dtype']}, max {manifest['max_seq_len']} tokens, batch ≤ {manifest['max_batch']}")
    console.print(f"  geometry  {g['num_layers']} layers, {g['num_heads']} heads, {g['num_kv_heads']} kv heads, head dim {g['head_dim']}, vocab {g['vocab_size']}")
    console.print(f"  backend   {manifest['backend']['name']} opset {manifest['backend']['opset']}: {sum(manifest['backend']['op_counts'].values())} nodes")
    if (manifest.get("kv") or {}).get("layout") == "in-place":
        writer = "GroupQueryAttention" if (manifest.get("attention") or {}).get("op") == "GroupQueryAttention" else "TensorScatter"
        int8 = (manifest.get("kv_cache") or {}).get("dtype") == "int8"
        console.print(f"  kv        in place: {manifest['kv']['buffers']} buffers [B, Hkv, {manifest['kv']['capacity_dim']}, D] written by {writer}"
                      + (f", int8 (per-channel scales in {manifest['kv_cache']['scales']})" if int8 else ""))
        attention = manifest.get("attention") or {}
        if attention.get("aligned_rows"):
            layout = "left-aligned (each row attends to its own keys: batched rows compute as alone)"
        else:
            layout = "left-padded" + (f" ({attention['aligned_rows_off']})" if "aligned_rows_off" in attention else "")
        console.print(f"  batch     decode rows {layout}")
    logits = manifest.get("logits") or {"positions": "all"}  # engines before the keep_last_logits pass return every position
    console.print("  logits    " + ("the last position only (prefill runs the LM head once)" if logits.get("positions") == "last" else "every position"))
    console.print(deploy_lines(manifest, args.engine), end="")
    console.print(f"  verify    {verify_line(manifest['verify'])}")
    console.print(f"  analysis  {analysis_line(manifest)}")
    console.print("  inputs")
    for spec in manifest["inputs"]:
        if spec["name"].startswith("past_key_values.") and not spec["name"].startswith("past_key_values.0."):
            continue
        console.print(f"    {spec['name']:<28} {spec['dtype']:<8} {spec['dims']}")
    console.print(f"    (past_key_values.0 … {g['num_layers'] - 1}.key|value)")
    shared = manifest.get("share_attention")
    if shared:
        groups = ", ".join(f"{grp[0]}-{grp[-1]}" for grp in shared["groups"])
        console.print(f"  shared    attention groups {groups}: layers {shared['shared_layers']} use their group's first layer's probabilities and have no key cache")
    for report in [*manifest["passes"], *(manifest.get("analysis") or {}).get("passes", [])]:
        console.print(f"  pass {report['name']}: {report['num_sites']} site(s)")
        for site in report["sites"]:
            console.print(f"    layer {site['layer']:>3}  {site['kind']:<14} {site['target']:<44} mask={site['mask']:<9} heads={site['heads']}  ({site['node']})")
    if not args.no_hash_check:
        console.print(f"  files     {len(manifest['files'])} verified against their sha256")
    return 0


def add_inspect_parser(sub) -> None:
    p = sub.add_parser("inspect", help="print an engine's manifest and rewritten attention sites")
    p.add_argument("engine")
    p.add_argument("--json", action="store_true", help="print the raw steerc.json")
    p.add_argument("--no-hash-check", action="store_true", help="do not verify file hashes")
    p.set_defaults(func=cmd_inspect)
