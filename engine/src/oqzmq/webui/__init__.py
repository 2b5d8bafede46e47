"""The optional webui (``pip install 'oq-zmq-engine[webui]'``): see :mod:`oqzmq.webui.app`."""
