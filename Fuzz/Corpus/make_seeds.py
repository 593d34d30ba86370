#!/usr/bin/env python3
"""Regenerates the hand-written seed inputs in Fuzz/Corpus/<target>/seed-*.

Files that libFuzzer found (named by their SHA-1) and crash reproducers (crash-*) are
kept as they are; only seed-* files are rewritten. Each STOMP and RESP input starts
with one control byte (see the target's source): 0x07 = chunks of 8 bytes, default
limit set.
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write(target: str, name: str, data: bytes):
    d = HERE / target
    d.mkdir(exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def stomp(name: str, frame: bytes, control: int = 0x07):
    write("FuzzSTOMPDecoder", name, bytes([control]) + frame)


def resp(name: str, data: bytes, control: int = 0x07):
    write("FuzzRESPParser", name, bytes([control]) + data)


def api(name: str, data: bytes):
    write("FuzzAPIJSON", name, data)


# -- STOMP ---------------------------------------------------------------------------
stomp("connect-12", b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:localhost\nheart-beat:10000,10000\n\n\x00")
stomp("stomp-11", b"STOMP\naccept-version:1.1\nhost:h\nlogin:u\npasscode:p:with:colons\n\n\x00")
stomp("connected", b"CONNECTED\nversion:1.2\nserver:switchboard\nsession:s-1\nheart-beat:0,0\n\n\x00")
stomp("send", b"SEND\ndestination:/topic/a\ncontent-type:text/plain\n\nhello\x00")
stomp("send-receipt-tx", b"SEND\ndestination:/topic/a\nreceipt:r1\ntransaction:tx1\n\nbody\x00")
stomp("subscribe", b"SUBSCRIBE\ndestination:/topic/stock.*\nid:0\nack:client-individual\n\n\x00")
stomp("unsubscribe", b"UNSUBSCRIBE\nid:0\nreceipt:u\n\n\x00")
stomp("ack", b"ACK\nid:m-1\ntransaction:tx\n\n\x00")
stomp("nack", b"NACK\nid:m-1\n\n\x00")
stomp("begin-commit-abort", b"BEGIN\ntransaction:t\n\n\x00COMMIT\ntransaction:t\n\n\x00ABORT\ntransaction:t\n\n\x00")
stomp("disconnect", b"DISCONNECT\nreceipt:bye\n\n\x00")
stomp("message", b"MESSAGE\ndestination:/topic/a\nmessage-id:1\nsubscription:0\nack:a1\ncontent-length:3\n\nabc\x00")
stomp("receipt", b"RECEIPT\nreceipt-id:77\n\n\x00")
stomp("error", b"ERROR\nmessage:bad\\cthing\ncontent-type:text/plain\ncontent-length:6\n\nreason\x00")
stomp("escapes", b"SEND\ndestination:/topic/a\nk\\c\\n:v\\r\\n\\c\\\\end\n\n\x00")
stomp("escape-undefined", b"SEND\ndestination:/topic/a\nk:v\\t\n\n\x00")
stomp("escape-trailing", b"SEND\ndestination:/topic/a\nk:v\\\n\n\x00")
stomp("connect-colons-unescaped", b"CONNECT\nlogin:a\\cb\npasscode:x:y\n\n\x00")
stomp("content-length-nul", b"SEND\ndestination:/topic/a\ncontent-length:5\n\na\x00b\x00c\x00")
stomp("content-length-zero", b"SEND\ndestination:/topic/a\ncontent-length:0\n\n\x00")
stomp("content-length-bad", b"SEND\ncontent-length:12a\n\nx\x00")
stomp("content-length-huge", b"SEND\ncontent-length:99999999999999999999999\n\nx\x00")
stomp("content-length-no-nul", b"SEND\ncontent-length:2\n\nabc\x00")
stomp("content-length-repeat", b"SEND\ncontent-length:1\ncontent-length:3\n\na\x00")
stomp("heartbeats", b"\n\n\r\n\nSEND\ndestination:/topic/a\n\nx\x00\n\r\n\n")
stomp("crlf-frame", b"SEND\r\ndestination:/topic/a\r\nk:v\r\r\n\r\nbody\x00")
stomp("bare-cr", b"\rSEND\n\n\x00")
stomp("two-frames", b"SEND\ndestination:/a\n\n1\x00SEND\ndestination:/b\n\n2\x00", control=0x00)
stomp("repeated-headers", b"SEND\nfoo:1\nfoo:2\nfoo:3\n\n\x00")
stomp("empty-header", b"SEND\n:\n:v\nk:\n\n\x00")
stomp("no-colon", b"SEND\nnocolon\n\n\x00")
stomp("unknown-command", b"FOO\n\n\x00")
stomp("lowercase-command", b"send\n\n\x00")
stomp("empty-frame", b"\x00")
stomp("truncated", b"SUBSCRIBE\ndestination:/topic/a\nid:", control=0x00)
stomp("many-headers", b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(70)) + b"\n\x00", control=0x1F)
stomp("long-line", b"SEND\nh:" + b"v" * 300 + b"\n\n\x00", control=0x03)
stomp("big-body", b"SEND\n\n" + b"x" * 600 + b"\x00", control=0x2F)
stomp("small-limits", b"SEND\na:b\n\nxy\x00", control=0x40)
stomp("tiny-limits", b"ACK\n\n\x00", control=0xC0)
stomp("utf8", "SEND\ndestination:/topic/ünï\nkey:välüe✓\n\nhéllo 🌍\x00".encode(), control=0x01)
stomp("invalid-utf8", b"SEND\ndestination:/topic/\xff\xfe\nk\xc3:\xc3\x28\n\n\xc0\xaf\x00", control=0x02)
stomp("flood", b"SEND\ndestination:/topic/a\n\nx\x00" * 40, control=0x1F)

# -- RESP ----------------------------------------------------------------------------
resp("simple-string", b"+OK\r\n")
resp("simple-error", b"-ERR unknown command 'FOO'\r\n")
resp("integer", b":1000\r\n:-42\r\n:+7\r\n")
resp("integer-max", b":9223372036854775807\r\n:-9223372036854775808\r\n")
resp("integer-overflow", b":9223372036854775808\r\n")
resp("bulk", b"$5\r\nhello\r\n")
resp("bulk-crlf-inside", b"$4\r\na\r\nb\r\n")
resp("bulk-empty", b"$0\r\n\r\n")
resp("bulk-null", b"$-1\r\n")
resp("bulk-negative", b"$-2\r\n")
resp("bulk-huge", b"$9999999999999\r\nx\r\n")
resp("array", b"*3\r\n$3\r\nfoo\r\n:1\r\n+bar\r\n")
resp("array-null", b"*-1\r\n")
resp("array-empty", b"*0\r\n")
resp("nested", b"*2\r\n*2\r\n:1\r\n:2\r\n*1\r\n*1\r\n*0\r\n")
resp("deep", b"*1\r\n" * 120 + b":1\r\n", control=0x1F)
resp("deep-small-limits", b"*1\r\n" * 12 + b":1\r\n", control=0x3F)
resp("null", b"_\r\n")
resp("boolean", b"#t\r\n#f\r\n")
resp("boolean-bad", b"#x\r\n")
resp("double", b",3.14\r\n,-1e10\r\n,inf\r\n,-inf\r\n,nan\r\n,1E+300\r\n")
resp("double-bad", b",0x1p3\r\n")
resp("bignumber", b"(3492890328409238509324850943850943825024385\r\n(-1\r\n")
resp("bulk-error", b"!21\r\nSYNTAX invalid syntax\r\n")
resp("verbatim", b"=15\r\ntxt:Some string\r\n")
resp("verbatim-bad", b"=3\r\ntxt\r\n")
resp("map", b"%2\r\n+first\r\n:1\r\n$3\r\nkey\r\n*2\r\n:2\r\n:3\r\n")
resp("map-nested", b"%1\r\n%1\r\n+a\r\n%0\r\n~2\r\n:1\r\n:2\r\n")
resp("set", b"~3\r\n+a\r\n+b\r\n+c\r\n")
resp("push", b">3\r\n$7\r\nmessage\r\n$4\r\nchan\r\n$5\r\nhello\r\n")
resp("push-pmessage", b">4\r\n$8\r\npmessage\r\n$3\r\nch*\r\n$4\r\nchan\r\n$2\r\nhi\r\n")
resp("attribute", b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n")
resp("attribute-chain", b"|0\r\n|1\r\n+k\r\n+v\r\n+value\r\n")
resp("attribute-in-array", b"*2\r\n|1\r\n+a\r\n+b\r\n:1\r\n:2\r\n")
resp("xread", b"*1\r\n*2\r\n$6\r\nstream\r\n*1\r\n*2\r\n$15\r\n1526984818136-0\r\n*4\r\n$4\r\nbody\r\n$2\r\nhi\r\n$3\r\nenc\r\n$4\r\nutf8\r\n")
resp("hello-reply", b"%3\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n$7\r\nmodules\r\n*0\r\n")
resp("bad-leading-byte", b"?what\r\n")
resp("lf-only", b"+OK\n")
resp("cr-only", b"+OK\rX")
resp("pipelined", b"+OK\r\n:1\r\n$1\r\na\r\n*0\r\n_\r\n", control=0x00)
resp("long-line", b"+" + b"a" * 100 + b"\r\n", control=0x3F)
resp("big-count", b"*2147483647\r\n:1\r\n")
resp("count-overflow", b"*2147483648\r\n")

# -- API JSON ------------------------------------------------------------------------
api("valid", b'{"topic": "/topic/toast", "message": "testing API endpoint"}')
api("valid-headers", b'{"topic": "/topic/a", "message": "m", "headers": {"x-k": "v", "priority": "9"}, "contentType": "application/json"}')
api("reserved-headers", b'{"topic": "/topic/a", "message": "m", "headers": {"destination": "/topic/b", "content-length": "1", "message-id": "x", "content-type": "x"}}')
api("unicode", '{"topic": "/topic/ünï", "message": "h\\u00e9llo \\ud83c\\udf0d \\u0000 nul"}'.encode())
api("lone-surrogate", b'{"topic": "/topic/a", "message": "\\ud800"}')
api("missing-topic", b'{"message": "m"}')
api("missing-message", b'{"topic": "/topic/a"}')
api("empty-topic", b'{"topic": "", "message": "m"}')
api("topic-number", b'{"topic": 7, "message": "m"}')
api("topic-not-allowed", b'{"topic": "/queue/a", "message": "m"}')
api("topic-wildcard", b'{"topic": "/topic/*", "message": "m"}')
api("message-number", b'{"topic": "/topic/a", "message": 1.5e308}')
api("message-null", b'{"topic": "/topic/a", "message": null}')
api("headers-array", b'{"topic": "/topic/a", "message": "m", "headers": ["a"]}')
api("headers-non-string", b'{"topic": "/topic/a", "message": "m", "headers": {"a": 1}}')
api("content-type-empty", b'{"topic": "/topic/a", "message": "m", "contentType": ""}')
api("duplicate-keys", b'{"topic": "/topic/a", "topic": "/topic/b", "message": "m"}')
api("array", b'[{"topic": "/topic/a", "message": "m"}]')
api("scalar", b'"just a string"')
api("empty", b"")
api("truncated", b'{"topic": "/topic/a", "mess')
api("deep-nesting", b'{"topic": "/topic/a", "message": "m", "x": ' + b"[" * 300 + b"]" * 300 + b"}")
api("invalid-utf8", b'{"topic": "/topic/\xff", "message": "\xc0\xaf"}')
api("utf16-bom", '\ufeff{"topic": "/topic/a", "message": "m"}'.encode("utf-16"))
api("big-number", b'{"topic": "/topic/a", "message": "m", "n": 1e99999, "i": 123456789012345678901234567890}')
api("trailing-garbage", b'{"topic": "/topic/a", "message": "m"} xyz')
api("whitespace", b' \n\t{ "topic" : "/topic/a" , "message" : "m" } \n')
api("escapes", b'{"topic": "\\/topic\\/a", "message": "\\"\\\\\\/\\b\\f\\n\\r\\t"}')
