"""A Playground session driven over Streamlit's websocket protocol, without a browser.

It does what the browser does for the server: it requests the first script run, presses
Play by sending the button's trigger, and sends a fragment rerun whenever a fragment's
`run_every` timer fires (the `auto_rerun` messages). A full run that ends drops the timers
of fragments it did not declare again.
It draws nothing, so thirty of them load the server, not the benchmark machine's CPU.

Protocol of Streamlit 1.67: `BackMsg` and `ForwardMsg` protobufs over
`ws://host/_stcore/stream` with the subprotocol "streamlit".
"""

from __future__ import annotations

import asyncio
import re
import time

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

# Script-finished states after which the timers of undeclared fragments are dropped.
FULL_RUN_ENDS = (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_WITH_COMPILE_ERROR)

STEP_MARKDOWN = re.compile(r"^\*\*step (\d+)\*\*")


class ProtocolSession:
    """One student's session.

    Args:
        url: the app's http://127.0.0.1:port URL.
    """

    def __init__(self, url: str) -> None:
        self.ws_url = url.replace("http://", "ws://", 1) + "/_stcore/stream"
        self.buttons: dict[str, str] = {}  # widget key → widget id
        self.step: int | None = None
        self.start_step = 0
        self.end_step = 0
        self.updates = 0
        self.waiting = False
        self.errors: list[str] = []
        self.ready = asyncio.Event()
        self._query = ""
        self._page_hash = ""
        self._timers: dict[str, asyncio.Task] = {}
        self._declared: set[str] = set()  # fragments with a timer declared in this run
        self._socket = None

    async def _send_rerun(self, fragment_id: str = "", trigger: str | None = None) -> None:
        message = BackMsg()
        state = message.rerun_script
        state.query_string = self._query
        state.page_script_hash = self._page_hash
        if fragment_id:
            state.fragment_id = fragment_id
            state.is_auto_rerun = True
        if trigger is not None:
            widget = state.widget_states.widgets.add()
            widget.id = trigger
            widget.trigger_value = True
        await self._socket.send(message.SerializeToString())

    async def _timer(self, fragment_id: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self._send_rerun(fragment_id)

    def _on_element(self, element) -> None:
        kind = element.WhichOneof("type")
        if kind == "button":
            self.buttons[element.button.id.rsplit("-", 1)[-1]] = element.button.id
        elif kind == "markdown":
            found = STEP_MARKDOWN.match(element.markdown.body)
            if found:
                step = int(found.group(1))
                if step != self.step:
                    self.step = step
                    self.updates += 1
                self.waiting = "waiting for a slot" in element.markdown.body
        elif kind == "exception":
            self.errors.append(f"exception on the page: {element.exception.message[:120]}")

    def _on_message(self, message: ForwardMsg) -> None:
        kind = message.WhichOneof("type")
        if kind == "new_session":
            # Sent at the start of full runs and of fragment runs alike.
            self._page_hash = message.new_session.page_script_hash
            self._declared = set()
        elif kind == "auto_rerun":
            fragment_id = message.auto_rerun.fragment_id
            self._declared.add(fragment_id)
            if fragment_id in self._timers:
                self._timers[fragment_id].cancel()
            self._timers[fragment_id] = asyncio.create_task(
                self._timer(fragment_id, message.auto_rerun.interval))
        elif kind == "page_info_changed":
            self._query = message.page_info_changed.query_string
        elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
            self._on_element(message.delta.new_element)
        elif kind == "script_finished":
            if message.script_finished in FULL_RUN_ENDS:
                for fragment_id in set(self._timers) - self._declared:
                    self._timers.pop(fragment_id).cancel()
            self.ready.set()

    async def run(self, play: asyncio.Event, stop: asyncio.Event) -> None:
        """Open the page, press Play once `play` is set, and stay until `stop` is set."""
        try:
            async with websockets.connect(self.ws_url, subprotocols=["streamlit"],
                                          max_size=None, open_timeout=60) as socket:
                self._socket = socket
                reader = asyncio.create_task(self._read())
                await self._send_rerun()
                await play.wait()
                await asyncio.wait_for(self.ready.wait(), timeout=300)
                await self._send_rerun(trigger=self.buttons["play"])
                await stop.wait()
                reader.cancel()
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError, KeyError) as error:
            self.errors.append(f"{type(error).__name__}: {error}")
        finally:
            for task in self._timers.values():
                task.cancel()

    async def _read(self) -> None:
        while True:
            data = await self._socket.recv()
            message = ForwardMsg()
            message.ParseFromString(data)
            self._on_message(message)


async def run_sessions(url: str, count: int, seconds: float, stagger: float = 0.0
                       ) -> tuple[list[ProtocolSession], float, float]:
    """Open `count` sessions, press Play in all, and measure for `seconds`.

    Returns:
        The sessions, the seconds it took until every session showed its first page, and
        the measured seconds. Counters are reset when the measurement starts.
    """
    play, stop = asyncio.Event(), asyncio.Event()
    sessions = [ProtocolSession(url) for _ in range(count)]
    tasks = []
    opened = time.perf_counter()
    for session in sessions:
        tasks.append(asyncio.create_task(session.run(play, stop)))
        if stagger:
            await asyncio.sleep(stagger)
    await asyncio.wait([asyncio.create_task(s.ready.wait()) for s in sessions], timeout=600)
    open_seconds = time.perf_counter() - opened
    play.set()
    # Give every Play its first chunk before the clock starts.
    await asyncio.sleep(2.0)
    for session in sessions:
        session.updates = 0
        session.start_step = session.step or 0
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    for session in sessions:
        session.end_step = session.step or 0
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return sessions, open_seconds, elapsed
