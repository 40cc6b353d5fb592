"""CSV, Parquet, Arrow and save_to_disk folders through `datasets`, validated by fedit's own rules:
the same records as from JSON, one-line errors naming file, record and field, --columns for all."""

from pathlib import Path

import pytest

datasets = pytest.importorskip("datasets")

from fedit.cli import main  # noqa: E402
from fedit.data import Example, load_source  # noqa: E402
from fedit.data.fingerprint import spec_fingerprint  # noqa: E402
from fedit.errors import DataError  # noqa: E402

ROWS = [{"question": "Name a colour.", "context": "", "answer": "Blue.", "topic": "open_qa", "user": "u1"},
        {"question": "2+2?", "context": "", "answer": "4", "topic": "open_qa", "user": "u2"},
        {"question": "Empty?", "context": "", "answer": "", "topic": "open_qa", "user": "u2"}]
COLUMNS = "instruction=question,response=answer,category=topic"
EXPECTED = [Example("Name a colour.", "", "Blue.", "open_qa"), Example("2+2?", "", "4", "open_qa")]


def write_all(folder: Path, rows=ROWS) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    ds = datasets.Dataset.from_list(rows)
    paths = {"csv": folder / "d.csv", "parquet": folder / "d.parquet", "saved": folder / "saved",
             "dict": folder / "saved_dict"}
    ds.to_csv(str(paths["csv"]), index=False)
    ds.to_parquet(str(paths["parquet"]))
    ds.save_to_disk(str(paths["saved"]))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(paths["dict"]))
    paths["arrow"] = next(paths["saved"].glob("*.arrow"))
    return paths


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("kind", ["csv", "parquet", "arrow", "saved"])
def test_every_format_gives_the_records_json_gives(files, kind):
    examples, report = load_source(str(files[kind]), columns=COLUMNS)
    assert examples == EXPECTED                        # the CSV's "4" stays text; the empty answer is dropped
    assert [e.extra for e in examples] == [(("user", "u1"),), (("user", "u2"),)]   # kept for by-field
    assert (report.n_records, report.n_empty_response, report.n_kept) == (3, 1, 2)
    assert examples[0].source == files[kind].name


def test_errors_name_the_file_record_and_field(files, tmp_path):
    with pytest.raises(DataError, match=r"^.*d\.parquet: record 1: missing field 'instruction'$"):
        load_source(str(files["parquet"]))
    with pytest.raises(DataError) as err:
        load_source(str(files["csv"]), columns="instruction=question,response=reply")
    assert str(err.value) == f"{files['csv']}: record 1: missing column 'reply' (--columns response=reply)"
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=rf"^{bad}: cannot read as parquet \(.+\)$") as err:
        load_source(str(bad))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError) as err:
        load_source(str(files["dict"]))
    assert str(err.value) == (f"{files['dict']}: a saved DatasetDict with splits test, train; pass one split's "
                              f"folder, e.g. {files['dict'] / 'train'}")
    assert load_source(str(files["dict"] / "test"), columns=COLUMNS)[0] == EXPECTED


def test_local_dataset_scripts_are_refused_and_hub_takes_local_copies(files, tmp_path):
    script = tmp_path / "repo"
    script.mkdir()
    (script / "repo.py").write_text("raise SystemExit('never run')\n")
    with pytest.raises(DataError) as err:
        load_source(f"hub:{script}")
    assert str(err.value) == (f"hub:{script}: local dataset scripts are not run (they are code, not data); pass the "
                              "data files (.json, .jsonl, .csv, .parquet, .arrow) or their folder")
    clone = tmp_path / "clone" / "data"
    clone.mkdir(parents=True)
    (clone / "train-00000.parquet").write_bytes(files["parquet"].read_bytes())
    examples, report = load_source(f"hub:{clone.parent}", columns=COLUMNS)
    assert examples == EXPECTED and report.files == [f"{clone.parent}[train]"]
    for local in (files["csv"], files["saved"]):          # hub:FILE and hub:SAVED_FOLDER read as --data does
        assert load_source(f"hub:{local}", columns=COLUMNS)[0] == EXPECTED


def test_a_folder_of_mixed_formats_is_one_client_per_file_and_fingerprinted(files, tmp_path):
    folder = tmp_path / "clients"
    folder.mkdir()
    for kind in ("csv", "parquet"):
        (folder / f"client_{kind}.{kind}").write_bytes(files[kind].read_bytes())
    examples, _ = load_source(str(folder), columns=COLUMNS, dedupe=False)
    assert [e.source for e in examples] == ["client_csv.csv"] * 2 + ["client_parquet.parquet"] * 2
    saved = spec_fingerprint(str(files["saved"]))
    assert sorted(Path(f["path"]).name for f in saved["files"]) == sorted(
        [files["arrow"].name, "dataset_info.json", "state.json"])


def test_cli_partition_reads_parquet_with_columns(files, tmp_path, capfd):
    out = tmp_path / "parts"
    assert main(["partition", "--data", str(files["parquet"]), "--columns", COLUMNS, "--partition", "by-field:user",
                 "--out", str(out)]) == 0
    assert '"clients": [1, 1]' in capfd.readouterr().out
    assert main(["partition", "--data", str(files["parquet"]), "--partition", "iid", "--num-clients", "1",
                 "--out", str(tmp_path / "p2")]) == 2
    assert capfd.readouterr().err == (f"fedit partition: error: {files['parquet']}: record 1: missing field "
                                      "'instruction'\n")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    assert main(["partition", "--data", str(bad), "--out", str(tmp_path / "p3")]) == 2
    assert capfd.readouterr().err == (f"fedit partition: error: {bad}: cannot read as parquet (Parquet magic bytes "
                                      "not found in footer. Either the file is corrupted or this is not a parquet "
                                      "file.)\n")           # one line: not datasets' own log lines too
