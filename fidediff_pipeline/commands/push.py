"""``fidediff push --model FOLDER --repo-id ID``: upload a saved pipeline to the Hub with a generated model card.

The folder must come from `FideDiffPipeline.save_pretrained`; the pipeline's code files are uploaded with it (written
for the upload), so that ``DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)`` works without this
package. The folder's own README.md is the card, uploaded as it is; a folder without one gets a generated card.
``--dry-run`` writes that generated card into the folder as README.md (to read or edit before the push; an existing
README.md is never replaced) and lists what would be uploaded, without any network access.
"""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "push", help="upload a saved pipeline to the Hugging Face Hub with a model card",
        description="Upload a pipeline folder (made by save_pretrained) with a generated model card.",
    )
    parser.add_argument("--model", required=True, help="folder made by FideDiffPipeline.save_pretrained")
    parser.add_argument("--repo-id", required=True, help="Hub repo id, 'owner/name' or 'name'")
    parser.add_argument("--eval-json", nargs="+", default=None, metavar="SUMMARY",
                        help="summary.json files (or their folders) written by `fidediff eval`, for the card's table")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one, or $HF_TOKEN)")
    parser.add_argument("--license", default=None,
                        help="licence id for the card (default: openrail++ for SD 2.1-based weights, else apache-2.0)")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the generated model card into the folder as README.md (unless it has one: the "
                             "folder's own README.md is the card a push uploads) and list the files; upload nothing")
    parser.set_defaults(func=run)


def run(args) -> int:
    import tempfile

    from ..hub.push import check_repo_id, own_model_card, push_pipeline_to_hub, upload_plan, write_model_card

    folder = Path(args.model)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a saved pipeline (no model_index.json); make it with save_pretrained")
    if args.dry_run:
        check_repo_id(args.repo_id)
        card = own_model_card(folder, args.eval_json)
        done = f"the folder's own {card} is the card (kept as it is)" if card else None
        if card is None:
            card = write_model_card(folder, args.repo_id, args.eval_json, license=args.license)
            done = f"wrote {card} (the generated card: read or edit it, the push uploads it as it is then)"
        with tempfile.TemporaryDirectory(prefix="fidediff-push-") as scratch:
            files = [card, *upload_plan(folder, scratch).values()]
            size = sum(p.stat().st_size for p in files)
        print(f"{done}; would upload {len(files)} files ({size / 1e6:.1f} MB) to {args.repo_id} (dry run)")
        return 0
    url = push_pipeline_to_hub(folder, args.repo_id, eval_results=args.eval_json, token=args.token,
                               private=args.private or None, license=args.license, create_pr=args.create_pr)
    print(f"uploaded {folder} to {url}")
    return 0
