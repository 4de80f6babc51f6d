"""bench/load.py's websocket client: how it reads Streamlit's ForwardMsgs (no server: the messages are
built here the way Streamlit builds them for Compare's stage cards, alerts and script runs)."""
from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import load  # noqa: E402  (bench/load.py)
from streamlit.proto.Alert_pb2 import Alert  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402

CARD_A = [0, 3, 0, 0, 1, 0, 0]  # the delta paths Compare's headline cards had in a real run
CARD_B = [0, 3, 1, 0, 1, 0, 0]
TRUTH = [0, 3, 2, 0, 1, 0, 0]


def new_session(fragment_ids=()):
    msg = ForwardMsg()
    msg.new_session.page_script_hash = "abc"
    msg.metadata.run.script_run_id = "run"
    msg.metadata.run.fragment_ids.extend(fragment_ids)
    return msg


def metric(path, value, label="CVM stage", help="fits the CS3 row exactly"):
    msg = ForwardMsg()
    msg.metadata.delta_path.extend(path)
    m = msg.delta.new_element.metric
    m.label, m.body, m.help = label, value, help
    return msg


def alert(fmt, body="something"):
    msg = ForwardMsg()
    msg.metadata.delta_path.extend([0, 9])
    msg.delta.new_element.alert.format = fmt
    msg.delta.new_element.alert.body = body
    return msg


def finished(status=ForwardMsg.FINISHED_SUCCESSFULLY):
    msg = ForwardMsg()
    msg.script_finished = status
    return msg


def auto_rerun(fid, interval=1.0):
    msg = ForwardMsg()
    msg.auto_rerun.fragment_id, msg.auto_rerun.interval = fid, interval
    return msg


def feed(trace, *timed):
    for t, msg in timed:
        # what goes over the socket: serialised and parsed again
        parsed = ForwardMsg()
        parsed.ParseFromString(msg.SerializeToString())
        trace.feed(parsed, t)
    return trace


def test_first_and_both_results_are_the_model_stage_cards_not_truth_or_other_metrics():
    tr = feed(load.SessionTrace(results=2),
              (0.1, new_session()),
              (0.5, metric(CARD_A, "—")),  # a card without a stage yet
              (1.0, metric(CARD_A, "CS3")),
              (1.1, metric(CARD_A[:-2] + [1, 0], "0.18", label="MRE (mm)")),
              (1.5, metric(TRUTH, "CS1", help=load.TRUTH_HELP)),  # ground truth: not a model's result
              (1.6, metric([0, 4, 0], "CS4", label="generated as")),  # a phantom's stage: not a result
              (1.8, metric(CARD_A, "CS3")),  # the same card drawn again is still one result
              )
    assert (tr.first_s, tr.both_s) == (1.0, None) and not tr.complete
    feed(tr, (2.0, metric(CARD_B, "CS2?")), (3.0, finished()))  # "?" = unreliable fit, still a result
    assert (tr.first_s, tr.both_s, tr.done_s) == (1.0, 2.0, 3.0)
    assert tr.complete and tr.errors == []


def test_both_results_must_come_from_one_full_run_and_fragment_runs_do_not_restart_it():
    tr = feed(load.SessionTrace(results=2), (0.1, new_session()), (1.0, metric(CARD_A, "CS3")),
              (1.2, finished(ForwardMsg.FINISHED_EARLY_FOR_RERUN)),  # st.rerun(): a new full run follows
              (1.3, new_session()), (2.0, metric(CARD_B, "CS3")))
    assert tr.first_s == 1.0 and tr.both_s is None and not tr.finished
    feed(tr, (2.5, new_session(fragment_ids=["frag"])), (3.0, metric(CARD_A, "CS3")))
    assert tr.both_s == 3.0


def test_errors_are_exceptions_error_alerts_and_page_not_found_not_info_alerts_or_warnings():
    assert load.error_in(alert(Alert.INFO)) is None and load.error_in(alert(Alert.WARNING)) is None
    assert "boom" in load.error_in(alert(Alert.ERROR, "**boom**\n\ndetails"))
    exc = ForwardMsg()
    exc.delta.new_element.exception.type, exc.delta.new_element.exception.message = "ValueError", "bad image"
    assert load.error_in(exc) == "exception: ValueError: bad image"
    exc.delta.new_element.exception.is_warning = True  # a deprecation warning box
    assert load.error_in(exc) is None
    missing = ForwardMsg()
    missing.page_not_found.page_name = "compar"
    assert "page not found" in load.error_in(missing)
    tr = feed(load.SessionTrace(), (0.1, new_session()), (0.5, alert(Alert.ERROR, "Could not read x")))
    assert tr.complete and tr.first_s is None and tr.errors == ["error alert: Could not read x"]


def test_a_finished_run_without_results_waits_while_a_fragment_still_polls():
    tr = feed(load.SessionTrace(), (0.1, new_session()), (0.2, auto_rerun("f1", 1.0)), (0.3, finished()))
    assert tr.auto_reruns == {"f1": 1.0} and not tr.complete  # the sidebar polls for the models
    stop = ForwardMsg()
    stop.stop_auto_rerun.fragment_ids.append("f1")
    feed(tr, (0.4, stop))
    assert tr.auto_reruns == {} and tr.complete  # nothing can bring a result any more
    feed(tr, (1.0, new_session()), (1.1, auto_rerun("f2")))
    assert not tr.finished and tr.auto_reruns == {"f2": 1.0}


def test_summary_counts_sessions_with_errors_and_takes_percentiles_of_the_others():
    ok = [load.SessionTrace(first_s=t, both_s=t + 1, done_s=t + 2) for t in (1.0, 2.0, 3.0, 4.0)]
    bad = load.SessionTrace(first_s=0.1, errors=["timeout after 5 s (1 of 2 results)", "x"])
    row = load.summarise(5, ok + [bad], 9.0, {"rss_idle_mb": 1.0})
    assert row["errors"] == 1 and row["error_samples"][0].startswith("timeout")
    assert (row["first_p50_s"], row["first_max_s"], row["both_p95_s"], row["done_max_s"]) == (3.0, 4.0, 5.0, 6.0)
    assert load.percentile([], 0.5) is None


def test_widget_ids_come_from_the_drawn_widget_with_that_label():
    msg = ForwardMsg()
    msg.delta.new_element.radio.id, msg.delta.new_element.radio.label = "$$ID-1-cmp_source", "Input"
    assert load.widget_id(msg, "radio", "Input") == "$$ID-1-cmp_source"
    assert load.widget_id(msg, "radio", "Image") is None and load.widget_id(msg, "number_input", "Input") is None
    assert load.widget_id(metric(CARD_A, "CS3"), "radio", "Input") is None
