"""Session readers: the canonical table from each format, and bad input named by file, line and field."""

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from envs.data.errors import DataError
from envs.data.sessions import (
    SESSION_COLUMNS,
    read_acn_csv,
    read_acn_json,
    read_sessions,
    read_sessions_csv,
)

FIXTURES = Path(__file__).parent / "fixtures"
ACN_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "acn"
ACN_HEADER = ("arrival,departure,requested_energy (kWh),delivered_energy (kWh),station_id,session_id,"
              "estimated_departure,claimed")
RESIDENTIAL = {"session_id": "id", "arrival": "start", "departure": "end", "delivered_kwh": "energy_wh",
               "station_id": "charger", "battery_kwh": "battery_kwh", "max_charge_kw": "max_kw"}


def acn_row(session="s1", arrival="2019-05-06 08:00:00-07:00", departure="2019-05-06 12:00:00-07:00",
            requested="10.0", delivered="8.0", estimated="2019-05-06 11:00:00-07:00", claimed="True"):
    return f"{arrival},{departure},{requested},{delivered},CA-1,{session},{estimated},{claimed}"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def check_schema(table, tz):
    assert tuple(table.columns) == SESSION_COLUMNS
    for name in ("arrival", "departure", "announced_departure"):
        assert str(table[name].dt.tz) == tz
    assert table["arrival"].is_monotonic_increasing
    assert (table["departure"] >= table["arrival"]).all()
    assert (table["announced_departure"] >= table["arrival"]).all()
    assert table["session_id"].is_unique
    assert list(table.index) == list(range(len(table)))
    for name in ("requested_kwh", "delivered_kwh", "battery_kwh", "max_charge_kw"):
        assert table[name].dtype == np.float64


def test_acn_json_takes_the_latest_user_input_and_counts_sessions_without_one():
    table = read_acn_json(FIXTURES / "sessions_acn.json")
    check_schema(table, "America/Los_Angeles")
    assert len(table) == 4
    first = table.iloc[0]
    assert first["arrival"] == pd.Timestamp("2018-04-25 11:08:04", tz="UTC")
    assert first["requested_kwh"] == first["delivered_kwh"] == pytest.approx(7.932)
    assert first["announced_departure"] == first["departure"]
    second = table.set_index("session_id").loc["2_39_95_27_2018-04-25 13:45:09.617875"]
    assert second["requested_kwh"] == 21.0  # the entry modified last, though listed first
    assert second["announced_departure"] == pd.Timestamp("2018-04-25 23:45:10", tz="UTC")
    assert second["station_id"] == "CA-319"
    assert table.attrs["requested_from_delivered"] == 2  # userInputs null and []
    assert table.attrs["skipped"]["count"] == 0
    assert table["battery_kwh"].isna().all()


def test_acn_csv_reads_gzip_sorts_and_applies_the_claimed_rule():
    table = read_acn_csv(FIXTURES / "sessions_acn.csv.gz")
    check_schema(table, "America/Los_Angeles")
    assert list(table["session_id"]) == ["s8", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    unclaimed = table.set_index("session_id").loc["s3"]
    assert unclaimed["requested_kwh"] == unclaimed["delivered_kwh"] == 6.5
    assert unclaimed["announced_departure"] == unclaimed["departure"]
    claimed = table.set_index("session_id").loc["s2"]
    assert (claimed["requested_kwh"], claimed["delivered_kwh"]) == (30.0, 25.5)
    assert claimed["announced_departure"] == pd.Timestamp("2019-05-06 17:00", tz="America/Los_Angeles")
    assert table.attrs["requested_from_delivered"] == 1


def test_acn_csv_reads_plain_text_and_converts_to_the_given_zone(tmp_path):
    path = write(tmp_path, "plain.csv", "\n".join([ACN_HEADER, acn_row()]) + "\n")
    table = read_acn_csv(path, tz="UTC")
    assert table["arrival"].iloc[0] == pd.Timestamp("2019-05-06 15:00", tz="UTC")
    assert str(table["arrival"].dt.tz) == "UTC"


def test_semicolon_decimal_comma_log_loads_from_arguments():
    table = read_sessions_csv(FIXTURES / "sessions_residential.csv", RESIDENTIAL, sep=";", decimal=",",
                              thousands=".", dayfirst=True, tz="Europe/Berlin", energy_scale=0.001)
    check_schema(table, "Europe/Berlin")
    assert list(table["session_id"]) == ["r1", "r2", "r3"]
    assert table["delivered_kwh"].tolist() == pytest.approx([12.5, 8.2505, 0.95])
    assert table["requested_kwh"].tolist() == table["delivered_kwh"].tolist()
    assert table.attrs["requested_from_delivered"] == 3
    assert table["station_id"].tolist() == ["Garage; left", "Garage; left", "Street"]
    assert table["battery_kwh"].iloc[0] == 64.0 and np.isnan(table["battery_kwh"].iloc[1])
    assert table["max_charge_kw"].iloc[2] == 7.4
    assert table["arrival"].iloc[0] == pd.Timestamp("2019-05-06 16:30", tz="UTC")
    # 02:30 happens twice on 2019-10-27 in Berlin: the summer-time one is taken
    assert table["arrival"].iloc[2] == pd.Timestamp("2019-10-27 00:30", tz="UTC")
    assert (table["announced_departure"] == table["departure"]).all()


def test_generic_reader_with_a_date_format_and_requests(tmp_path):
    path = write(tmp_path, "log.csv", "begin,end,kwh,wanted,until\n"
                 "2021/03/01 07:00,2021/03/01 15:00,10.5,12,2021/03/01 16:00\n"
                 "2021/03/02 07:30,2021/03/02 09:00,3,4,\n")
    table = read_sessions_csv(path, {"arrival": "begin", "departure": "end", "delivered_kwh": "kwh",
                                     "requested_kwh": "wanted", "announced_departure": "until"},
                              date_format="%Y/%m/%d %H:%M", tz="Europe/Paris")
    assert table["requested_kwh"].tolist() == [12.0, 4.0]
    assert table["delivered_kwh"].tolist() == [10.5, 3.0]
    assert table["session_id"].tolist() == ["2", "3"]  # line numbers
    assert table["station_id"].tolist() == ["", ""]
    assert table["announced_departure"].iloc[1] == table["departure"].iloc[1]
    assert table.attrs["requested_from_delivered"] == 0


def test_parquet_with_typed_and_text_columns(tmp_path):
    frame = pd.DataFrame({
        "plug_in": pd.to_datetime(["2020-01-02 08:00", "2020-01-01 09:00"]).tz_localize("UTC"),
        "plug_out": ["2020-01-02 17:00:00+00:00", "2020-01-01 12:00:00+00:00"],
        "kwh": [11.0, 4.0],
        "id": [7, 8],
        "battery": [58.0, np.nan],
    })
    path = tmp_path / "sessions.parquet"
    frame.to_parquet(path)
    columns = {"arrival": "plug_in", "departure": "plug_out", "requested_kwh": "kwh", "session_id": "id",
               "battery_kwh": "battery"}
    table = read_sessions_csv(path, columns, tz="Asia/Tokyo")
    check_schema(table, "Asia/Tokyo")
    assert table["session_id"].tolist() == ["8", "7"]
    assert table["departure"].iloc[1] == pd.Timestamp("2020-01-02 17:00", tz="UTC")
    assert np.isnan(table["delivered_kwh"]).all()
    frame.loc[1, "kwh"] = -1.0
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"sessions\.parquet, row 2, field 'requested_kwh'"):
        read_sessions_csv(path, columns)


BAD_ACN_ROWS = [
    # (rows after the header, line, field, problem)
    ([acn_row(), acn_row("s2", arrival="2019-05-06 25:99:00-07:00")], 3, "'arrival'", "date"),
    ([acn_row(requested="-3.0")], 2, "'requested_kwh' (column 'requested_energy (kWh)')", ">= 0"),
    ([acn_row(), acn_row("s2", delivered="abc")], 3, "'delivered_kwh'", "not a finite number"),
    ([acn_row(departure="2019-05-06 07:00:00-07:00")], 2, "'departure'", "before the arrival"),
    ([acn_row(estimated="2019-05-06 07:00:00-07:00")], 2, "'announced_departure'", "before the arrival"),
    ([acn_row(), acn_row("s2"), acn_row("s1")], 4, "'session_id'", "line 2"),
    ([acn_row(), "", acn_row("s2", departure="")], 4, "'departure'", "empty"),
    ([acn_row(claimed="maybe")], 2, "'claimed'", "True or False"),
    ([acn_row(), acn_row("s2") + ",extra"], 3, None, "more fields"),
    ([acn_row(), "2019-05-06 08:00:00-07:00,2019-05-06 12:00:00-07:00,1.0"], 3, "'delivered_kwh'", "missing"),
]


@pytest.mark.parametrize(("rows", "line", "field", "problem"), BAD_ACN_ROWS)
def test_bad_rows_name_file_line_and_field(tmp_path, rows, line, field, problem):
    path = write(tmp_path, "bad.csv", "\n".join([ACN_HEADER, *rows]) + "\n")
    with pytest.raises(DataError) as info:
        read_acn_csv(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"{path}, line {line}")
    assert info.value.line == line
    if field is not None:
        assert f"field {field}" in message
    assert problem in message


def test_bad_rows_are_skipped_counted_and_reported_on_request(tmp_path):
    rows = [acn_row("s1"), acn_row("s2", requested="-1"), acn_row("s3"), acn_row("s1"),
            acn_row("s4", arrival="soon")]
    path = write(tmp_path, "bad.csv", "\n".join([ACN_HEADER, *rows]) + "\n")
    with pytest.raises(DataError, match="line 3.*2 more invalid rows"):
        read_acn_csv(path)
    with pytest.warns(UserWarning, match=r"skipped 3 invalid rows \(lines 3, 5, 6\)"):
        table = read_acn_csv(path, skip_invalid=True)
    assert table["session_id"].tolist() == ["s1", "s3"]
    skipped = table.attrs["skipped"]
    assert skipped["count"] == 3 and skipped["lines"] == [3, 5, 6]
    assert "field 'session_id'" in skipped["messages"][1] and "line 2" in skipped["messages"][1]


def test_multiline_quoted_fields_keep_line_numbers(tmp_path):
    text = "\n".join([ACN_HEADER, acn_row().replace("CA-1", '"CA\n1"'), acn_row("s2", requested="x")]) + "\n"
    path = write(tmp_path, "quoted.csv", text)
    with pytest.raises(DataError, match=r"line 4, field 'requested_kwh'"):
        read_acn_csv(path)


@pytest.mark.parametrize(("text", "line", "match"), [
    ("arrival,departure\n" + acn_row() + "\n", 1,
     r"field 'announced_departure'.*'estimated_departure' is not in the header"),
    ("\n".join([ACN_HEADER, acn_row(), acn_row("s2").replace("CA-1", '"CA-1')]) + "\n", 3, "malformed CSV"),
    ("", 1, "no header"),
])
def test_malformed_csv_files(tmp_path, text, line, match):
    path = write(tmp_path, "broken.csv", text)
    with pytest.raises(DataError, match=match) as info:
        read_acn_csv(path)
    assert str(path) in str(info.value) and info.value.line == line


def test_corrupt_gzip_and_bad_encoding(tmp_path):
    path = tmp_path / "broken.csv.gz"
    path.write_bytes(gzip.compress(b"arrival,departure\n")[:12])
    with pytest.raises(DataError, match="broken.csv.gz: is not a valid gzip file"):
        read_acn_csv(path)
    path = tmp_path / "latin.csv"
    path.write_bytes((ACN_HEADER + "\n" + acn_row() + "\n").encode() + b"caf\xe9\n")
    with pytest.raises(DataError, match="latin.csv, line 3: is not utf-8-sig text"):
        read_acn_csv(path)


def test_generic_reader_argument_and_column_errors(tmp_path):
    path = write(tmp_path, "log.csv", "a;b;c\n2021-01-01 08:00;2021-01-01 09:00;3\n")
    with pytest.raises(ValueError, match="unknown canonical name 'energy'"):
        read_sessions_csv(path, {"arrival": "a", "departure": "b", "energy": "c"})
    with pytest.raises(ValueError, match="'requested_kwh' or 'delivered_kwh'"):
        read_sessions_csv(path, {"arrival": "a", "departure": "b"})
    columns = {"arrival": "a", "departure": "b", "requested_kwh": "c"}
    with pytest.raises(DataError, match=r"log.csv, line 1, field 'arrival': .*check sep=','"):
        read_sessions_csv(path, columns)
    assert read_sessions_csv(path, columns, sep=";")["requested_kwh"].tolist() == [3.0]


def write_json(tmp_path, items_text):
    text = '{\n  "_meta": {"page": 1},\n  "_items": [\n' + items_text + "\n  ]\n}\n"
    return write(tmp_path, "sessions.json", text)


def json_item(session="a", connection="Wed, 25 Apr 2018 11:08:04 GMT", inputs="null", **extra):
    fields = {"connectionTime": f'"{connection}"', "disconnectTime": '"Wed, 25 Apr 2018 13:20:10 GMT"',
              "kWhDelivered": "7.9", "spaceID": '"CA-1"', "sessionID": f'"{session}"', "userInputs": inputs}
    fields.update(extra)
    return "    {\n" + ",\n".join(f'      "{k}": {v}' for k, v in fields.items() if v is not None) + "\n    }"


@pytest.mark.parametrize(("second", "field", "problem"), [
    (json_item("b", connection="yesterday"), "'arrival' (key 'connectionTime')", "date"),
    (json_item("b", connectionTime=None), "'arrival' (key 'connectionTime')", "missing"),
    (json_item("b", kWhDelivered="-2"), "'delivered_kwh' (key 'kWhDelivered')", ">= 0"),
    (json_item("b", inputs='[{"kWhRequested": 5, "requestedDeparture": "Wed, 25 Apr 2018 09:00:00 GMT"}]'),
     "'announced_departure' (key 'userInputs[-1].requestedDeparture')", "before the arrival"),
    (json_item("b", inputs='[{"requestedDeparture": "Wed, 25 Apr 2018 19:00:00 GMT"}]'),
     "'requested_kwh' (key 'userInputs[-1].kWhRequested')", "missing"),
    (json_item("b", inputs='{"kWhRequested": 5}'), "'userInputs'", "list of objects"),
    (json_item("a"), "'session_id' (key 'sessionID')", "line 4"),
    ("    17", None, "JSON object"),
])
def test_bad_json_sessions_name_file_line_and_field(tmp_path, second, field, problem):
    path = write_json(tmp_path, json_item("a") + ",\n" + second)
    first_lines = 2 + json_item("a").count("\n") + 1
    with pytest.raises(DataError) as info:
        read_acn_json(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line {first_lines + 2}")
    if field is not None:
        assert f"field {field}" in message
    assert problem in message


@pytest.mark.parametrize(("text", "line", "match"), [
    ('{\n  "_items": [\n    {"a": 1}\n    {"b": 2}\n  ]\n}\n', 4, "expected ','"),
    ('{\n  "_items": [\n    {"a": 1,}\n  ]\n}\n', 3, "malformed JSON"),
    ('{\n  "_meta": {}\n}\n', 1, "no '_items' list"),
    ('{\n  "_items": []\n}\n]', 4, "extra data"),
    ('"sessions"', 1, "expected an object"),
])
def test_malformed_json_files(tmp_path, text, line, match):
    path = write(tmp_path, "broken.json", text)
    with pytest.raises(DataError, match=match) as info:
        read_acn_json(path)
    assert info.value.line == line and str(path) in str(info.value)


def test_json_list_and_skip_invalid(tmp_path):
    text = "[\n" + ",\n".join([json_item("a"), json_item("b", kWhDelivered='"x"'), json_item("c")]) + "\n]\n"
    path = write(tmp_path, "list.json", text)
    with pytest.warns(UserWarning, match="skipped 1 invalid rows"):
        table = read_acn_json(path, skip_invalid=True)
    assert table["session_id"].tolist() == ["a", "c"]
    assert table.attrs["skipped"]["lines"] == [2 + json_item("a").count("\n") + 1]


ACN_FILES = {
    "caltech_2019-05-01_2019-08-31.csv.gz": 3527,
    "caltech_2019-09-01_2019-12-31.csv.gz": 3177,
    "caltech_2020-02-01_2020-05-31.csv.gz": 1269,
    "jpl_2019-05-01_2019-08-31.csv.gz": 6026,
    "jpl_2019-09-01_2019-12-31.csv.gz": 5804,
    "jpl_2020-02-01_2020-05-31.csv.gz": 2689,
}


@pytest.mark.skipif(not ACN_DATA.is_dir(), reason="shared ACN data not present")
def test_real_acn_files_load_without_errors():
    for name, rows in ACN_FILES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            table = read_acn_csv(ACN_DATA / name)
        check_schema(table, "America/Los_Angeles")
        assert len(table) == rows, name
        assert table.attrs["skipped"]["count"] == 0
        assert 0 < table.attrs["requested_from_delivered"] < rows


def test_files_without_sessions_give_empty_tables(tmp_path):
    for table in (read_acn_json(write(tmp_path, "empty.json", '{"_items": []}')),
                  read_acn_csv(write(tmp_path, "empty.csv", ACN_HEADER + "\n\n"))):
        assert tuple(table.columns) == SESSION_COLUMNS and len(table) == 0
        assert str(table["arrival"].dt.tz) == "America/Los_Angeles"


def test_sessions_repeated_across_files_are_kept_once_and_counted():
    from envs.data.sessions import read_sessions

    path = FIXTURES / "sessions_acn.csv.gz"
    once = read_sessions(path)
    with pytest.warns(UserWarning, match=f"{len(once)} sessions appear more than once in the files"):
        twice = read_sessions([path, path])
    assert len(twice) == len(once) and twice.attrs["repeated_across_files"] == len(once)
    pd.testing.assert_frame_equal(twice, once, check_like=True)


# --- the data-quality report ----------------------------------------------------------------

def test_report_counts_what_was_read_dropped_and_odd(tmp_path):
    rows = [acn_row("s1"), acn_row("s2", departure="2019-05-06 07:00:00-07:00"), acn_row("s1"),
            acn_row("s3", departure="2019-05-06 08:00:00-07:00"), acn_row("s4", requested="x"),
            acn_row("s5", claimed="False")]
    path = write(tmp_path, "log.csv", "\n".join([ACN_HEADER, *rows, ""]))
    with pytest.warns(UserWarning, match="skipped 3 invalid rows"):
        table = read_acn_csv(path, skip_invalid=True)
    report = table.attrs["report"]
    assert (report.rows_read, report.sessions_kept) == (6, 3)
    assert report.dropped == {"invalid departure": 1, "invalid requested_kwh": 1, "repeated session id": 1}
    assert (report.negative_stays, report.zero_stays, report.requested_from_delivered) == (1, 1, 1)
    assert report.requested_kwh == pytest.approx(10.0 + 10.0 + 8.0)
    assert report.summary().startswith(f"{path}: 6 sessions read, 3 kept; dropped 3 (invalid departure 1")
    written = report.write(tmp_path / "out" / "report.json")
    assert json.loads(written.read_text())["dropped"]["repeated session id"] == 1


def test_acn_json_meta_range_leaves_out_sessions_outside_it(tmp_path):
    items = ",\n".join([json_item("a", "Wed, 25 Apr 2018 11:08:04 GMT"),
                        json_item("b", "Thu, 26 Apr 2018 09:00:00 GMT",
                                  disconnectTime='"Thu, 26 Apr 2018 10:00:00 GMT"')])
    meta = ('{"end": "Thu, 26 Apr 2018 00:00:00 GMT", "site": "caltech", '
            '"start": "Wed, 25 Apr 2018 00:00:00 GMT"}')
    path = write(tmp_path, "s.json", '{"_meta": ' + meta + ', "_items": [\n' + items + "\n]}\n")
    with pytest.warns(UserWarning, match="left out 1 sessions arriving outside the file's date range"):
        table = read_acn_json(path)
    assert table["session_id"].tolist() == ["a"]
    report = table.attrs["report"]
    assert report.dropped == {"outside the file's date range": 1} and report.sessions_kept == 1
    assert report.date_range == ("2018-04-24T17:00:00-07:00", "2018-04-25T17:00:00-07:00")
    assert read_acn_json(write_json(tmp_path, items)).attrs["report"].dropped == {}  # no range: all kept
    bad = write(tmp_path, "bad.json", '{"_meta": {"start": "yesterday"}, "_items": [\n' + items + "\n]}\n")
    with pytest.raises(DataError, match=r"bad.json, field '_meta.start': cannot be read as a date"):
        read_acn_json(bad)


def test_read_sessions_filters_stations_and_reports_each_file(tmp_path):
    other = acn_row("s2").replace("CA-1", "CA-9")
    first = write(tmp_path, "a.csv", "\n".join([ACN_HEADER, acn_row("s1"), other]))
    second = write(tmp_path, "b.csv", "\n".join([ACN_HEADER, acn_row("s1"), acn_row("s3")]))
    with pytest.warns(UserWarning, match="1 sessions appear more than once"):
        table = read_sessions([first, second], stations=["CA-1"])
    assert table["session_id"].tolist() == ["s1", "s3"]
    report = table.attrs["report"]
    assert report.files == (str(first), str(second)) and report.rows_read == 4
    assert report.dropped == {"repeated across files": 1, "other station": 1}
    assert [part.sessions_kept for part in report.per_file] == [2, 2]
    with pytest.raises(ValueError, match="stations must be a list"):
        read_sessions(first, stations="CA-1")
