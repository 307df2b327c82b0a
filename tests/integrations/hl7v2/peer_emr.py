"""An EMR that receives our HL7 messages: python-hl7's asyncio MLLP server (``hl7.mllp``), a peer
we did not write, answering with the acknowledgement code a test asks for."""

from __future__ import annotations

import asyncio
import threading

import hl7
import hl7.mllp


class PeerEMR:
    """``hl7.mllp.start_hl7_server`` in a thread of its own: answers every message with ``answer``
    (AA, AE, AR, or FOREIGN: an AA for another control id) and keeps what it received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answer = "AA"
        self.received: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    async def _handle(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not writer.is_closing():
                message = await reader.readmessage()
                self.received.append(str(message))
                ack = message.create_ack("AA" if self.answer == "FOREIGN" else self.answer)
                if self.answer == "FOREIGN":
                    ack["MSA.F2"] = "SOMEONE-ELSES"
                elif self.answer != "AA":
                    ack["MSA.F3"] = "PID-3 unknown patient"
                writer.writemessage(ack)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    def start(self) -> PeerEMR:
        if not self._thread.is_alive():
            self._thread.start()

        async def serve() -> asyncio.base_events.Server:
            return await hl7.mllp.start_hl7_server(self._handle, "127.0.0.1", self.port, encoding="utf-8")

        self._server = asyncio.run_coroutine_threadsafe(serve(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._server is not None:
            server = self._server

            async def close() -> None:
                server.close()
                await server.wait_closed()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
