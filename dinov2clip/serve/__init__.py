"""The search server: a JSON API and a web page over one index (`pipeline serve`)."""

from dinov2clip.serve.app import create_app
from dinov2clip.serve.engine import SearchEngine

__all__ = ["SearchEngine", "create_app", "serve"]

STOPPED = "server stopped (interrupted)"


def serve(*, index_dir, run=None, root=None, host: str = "127.0.0.1", port: int = 8000,
          device: str = "auto", max_batch: int = 32) -> None:
    """Load the index and the run once, then answer HTTP until interrupted. Ctrl-C raises
    KeyboardInterrupt once the server has shut down (the CLI's exit code 130)."""
    import logging
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        # uvicorn takes SIGINT for a graceful shutdown and then returns as if asked to stop;
        # remember it, so the command can tell an interrupt from a clean exit.
        interrupted = False

        def handle_exit(self, sig, frame) -> None:
            self.interrupted |= sig == signal.SIGINT
            super().handle_exit(sig, frame)

    engine = SearchEngine(index_dir, run=run, device=device, max_batch=max_batch, root=root)
    logging.getLogger(__name__).info("serving %d images from %s on http://%s:%d/",
                                     engine.size, index_dir, host, port)
    server = Server(uvicorn.Config(create_app(engine), host=host, port=port,
                                   log_level="warning"))
    server.run()
    if server.interrupted:
        raise KeyboardInterrupt
