"""What the live EC2 tests' HTTP proxies in front of moto's server share:
passing one request on and its answer back (tests/live/test_ec2.py delays
calls, tests/live/test_ec2_demo.py injects errors)."""
import http.client


def relay(handler, upstream_port, body):
    """Send `handler`'s request (with `body`) to moto on `upstream_port` and
    write moto's answer back to the client."""
    upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
    headers = {k: v for k, v in handler.headers.items()
               if k.lower() not in ("connection", "content-length")}
    upstream.request(handler.command, handler.path, body, headers)
    response = upstream.getresponse()
    data = response.read()
    upstream.close()
    handler.send_response(response.status)
    for key, value in response.getheaders():
        if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
            handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
