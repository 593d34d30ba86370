import NIOCore
import Testing

@testable import Redis

func encoded(_ command: some RedisCommand) -> String {
    var encoder = RESPCommandEncoder()
    command.encode(into: &encoder)
    return String(buffer: encoder.buffer)
}

/// Builds the expected RESP array of bulk strings from plain arguments.
func resp(_ args: String...) -> String {
    "*\(args.count)\r\n" + args.map { "$\($0.utf8.count)\r\n\($0)\r\n" }.joined()
}

@Suite("Command encoding")
struct CommandEncodingTests {
    @Test func encoderPrimitives() {
        var encoder = RESPCommandEncoder()
        encoder.encodeArray(count: 4)
        encoder.encodeBulk("héllo")
        encoder.encodeBulk(ByteBuffer(bytes: [0, 13, 10, 255]))
        encoder.encodeBulk([UInt8]([1, 2]))
        encoder.encodeBulk(-1234)
        var expected = ByteBuffer(string: "*4\r\n$6\r\nhéllo\r\n$4\r\n")
        expected.writeBytes([0, 13, 10, 255])
        expected.writeString("\r\n$2\r\n")
        expected.writeBytes([1, 2])
        expected.writeString("\r\n$5\r\n-1234\r\n")
        #expect(encoder.buffer == expected)
        for value in [0, 9, 10, 99, 100, Int.max, Int.min] {
            var e = RESPCommandEncoder()
            e.encodeBulk(value)
            #expect(String(buffer: e.buffer) == "$\(String(value).utf8.count)\r\n\(value)\r\n")
        }
    }

    /// A timeout under a millisecond encoded as `WAIT n 0`, which blocks without end.
    @Test func waitTimeoutIsWholeMillisecondsAndNeverZero() {
        #expect(encoded(WAIT(replicas: 1, timeout: .milliseconds(250))) == resp("WAIT", "1", "250"))
        #expect(encoded(WAIT(replicas: 2, timeout: .microseconds(1_500))) == resp("WAIT", "2", "2"))
        #expect(encoded(WAIT(replicas: 1, timeout: .nanoseconds(.max))) == resp("WAIT", "1", "\(Int64.max / 1_000_000 + 1)"))
        for timeout: TimeAmount in [.microseconds(300), .zero, .nanoseconds(-5)] {
            #expect(encoded(WAIT(replicas: 1, timeout: timeout)) == resp("WAIT", "1", "1"), "\(timeout)")
        }
    }

    @Test func xaddWithApproximateMaxLen() {
        let command = XADD(key: "s", maxLength: 1000, fields: [("a", "1"), ("b", .bytes(ByteBuffer(string: "x\r\ny")))])
        #expect(encoded(command) == "*10\r\n$4\r\nXADD\r\n$1\r\ns\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n$1\r\n*\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$4\r\nx\r\ny\r\n")
        #expect(encoded(XADD(key: "s", maxLength: 5, fields: [("f", "v")])) == resp("XADD", "s", "MAXLEN", "~", "5", "*", "f", "v"))
        #expect(
            encoded(XADD(key: "s", id: "1-1", maxLength: 5, approximateTrim: false, fields: [("f", 7)]))
                == resp("XADD", "s", "MAXLEN", "5", "1-1", "f", "7"))
        #expect(encoded(XADD(key: "s", fields: [("f", "v")])) == resp("XADD", "s", "*", "f", "v"))
    }

    @Test func streamReads() {
        #expect(
            encoded(XREAD(count: 10, blockMilliseconds: 500, streams: [("a", "0"), ("b", "$")]))
                == resp("XREAD", "COUNT", "10", "BLOCK", "500", "STREAMS", "a", "b", "0", "$"))
        #expect(encoded(XREAD(streams: [("a", "0-0")])) == resp("XREAD", "STREAMS", "a", "0-0"))
        #expect(
            encoded(XREADGROUP(group: "g", consumer: "c", count: 1, blockMilliseconds: 0, noAck: true, streams: [("s", ">")]))
                == resp("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "BLOCK", "0", "NOACK", "STREAMS", "s", ">"))
        #expect(XREADGROUP(group: "g", consumer: "c", blockMilliseconds: 0, streams: [("s", ">")]).blockingTimeout == .zero)
        #expect(XREAD(streams: [("a", "0")]).blockingTimeout == nil)
    }

    @Test func streamManagement() {
        #expect(encoded(XACK(key: "s", group: "g", ids: ["1-0", "2-0"])) == resp("XACK", "s", "g", "1-0", "2-0"))
        #expect(
            encoded(XGROUPCREATE(key: "s", group: "g", id: "0", makeStream: true, entriesRead: 3))
                == resp("XGROUP", "CREATE", "s", "g", "0", "MKSTREAM", "ENTRIESREAD", "3"))
        #expect(encoded(XGROUPCREATE(key: "s", group: "g")) == resp("XGROUP", "CREATE", "s", "g", "$"))
        #expect(
            encoded(XAUTOCLAIM(key: "s", group: "g", consumer: "c", minIdleMilliseconds: 100, count: 5))
                == resp("XAUTOCLAIM", "s", "g", "c", "100", "0-0", "COUNT", "5"))
        #expect(encoded(XPENDING(key: "s", group: "g")) == resp("XPENDING", "s", "g"))
        #expect(
            encoded(XPENDINGRANGE(key: "s", group: "g", minIdleMilliseconds: 9, count: 10, consumer: "c"))
                == resp("XPENDING", "s", "g", "IDLE", "9", "-", "+", "10", "c"))
        #expect(encoded(XTRIM(key: "s", strategy: .maxLength(10))) == resp("XTRIM", "s", "MAXLEN", "~", "10"))
        #expect(encoded(XTRIM(key: "s", strategy: .minID("5-0"), approximate: false)) == resp("XTRIM", "s", "MINID", "5-0"))
    }

    @Test func connectionAndMisc() {
        #expect(encoded(PING()) == resp("PING"))
        #expect(
            encoded(HELLO(protocolVersion: 3, username: "u", password: "p", clientName: "gw"))
                == resp("HELLO", "3", "AUTH", "u", "p", "SETNAME", "gw"))
        #expect(encoded(HELLO(password: "p")) == resp("HELLO", "3", "AUTH", "default", "p"))
        #expect(encoded(AUTH(password: "p")) == resp("AUTH", "p"))
        #expect(encoded(AUTH(username: "u", password: "p")) == resp("AUTH", "u", "p"))
        #expect(encoded(SELECT(database: 3)) == resp("SELECT", "3"))
        #expect(encoded(SET("k", value: "v", condition: .onlyIfNotExists, expireMilliseconds: 100)) == resp("SET", "k", "v", "NX", "PX", "100"))
        #expect(encoded(DEL("a", "b")) == resp("DEL", "a", "b"))
        #expect(encoded(EVAL(script: "return 1", keys: ["k"], arguments: ["a", 2])) == resp("EVAL", "return 1", "1", "k", "a", "2"))
        #expect(encoded(EVALSHA(sha1: "abc")) == resp("EVALSHA", "abc", "0"))
        #expect(encoded(PUBLISH(channel: "c", message: "m")) == resp("PUBLISH", "c", "m"))
        #expect(encoded(SPUBLISH(channel: "c", message: "m")) == resp("SPUBLISH", "c", "m"))
        var encoder = RESPCommandEncoder()
        PSUBSCRIBE("a*", "b*").encode(into: &encoder)
        #expect(String(buffer: encoder.buffer) == resp("PSUBSCRIBE", "a*", "b*"))
        #expect(SUNSUBSCRIBE("x").confirmationKind == "sunsubscribe")
    }
}

@Suite("Response decoding")
struct ResponseDecodingTests {
    @Test func xreadRESP3AndRESP2Shapes() throws {
        let resp3 = try parseOne("%1\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$2\r\nv\n\r\n")
        let resp2 = try parseOne("*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$2\r\nv\n\r\n")
        for token in [resp3, resp2] {
            let result = try #require(try XREAD.Response(fromRESP: token))
            #expect(result.streams.count == 1)
            #expect(result["s"].first?.id == "1-0")
            #expect(result["s"].first?[field: "f"] == ByteBuffer(string: "v\n"))
        }
        #expect(try XREAD.Response(fromRESP: parseOne("_\r\n")) == nil)
        #expect(try XREAD.Response(fromRESP: parseOne("*-1\r\n")) == nil)
    }

    @Test func pendingAndAutoclaim() throws {
        let summary = try RedisStreamPendingSummary(fromRESP: parseOne("*4\r\n:2\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n*1\r\n*2\r\n$1\r\nc\r\n$1\r\n2\r\n"))
        #expect(summary.count == 2 && summary.smallestID == "1-0" && summary.greatestID == "2-0")
        #expect(summary.consumers.map(\.name) == ["c"] && summary.consumers.map(\.pending) == [2])
        let empty = try RedisStreamPendingSummary(fromRESP: parseOne("*4\r\n:0\r\n_\r\n_\r\n_\r\n"))
        #expect(empty.count == 0 && empty.smallestID == nil && empty.consumers.isEmpty)
        let claim = try RedisStreamAutoClaimResult(fromRESP: parseOne("*3\r\n$3\r\n0-0\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n*1\r\n$3\r\n9-0\r\n"))
        #expect(claim.nextStartID == "0-0" && claim.entries.map(\.id) == ["1-0"] && claim.deletedIDs == ["9-0"])
        let entries = try [RedisStreamPendingEntry](fromRESP: parseOne("*1\r\n*4\r\n$3\r\n1-0\r\n$1\r\nc\r\n:15\r\n:2\r\n"))
        #expect(entries.first?.idleMilliseconds == 15 && entries.first?.deliveryCount == 2)
    }
}

/// `XINFO STREAM`'s reply as RESP2 (flat pairs) and RESP3 (a map), with the first and last
/// entries (nested values) skipped.
struct StreamInfoDecodingTests {
    static let fields =
        "$6\r\nlength\r\n:2\r\n$15\r\nradix-tree-keys\r\n:1\r\n$17\r\nlast-generated-id\r\n$3\r\n5-1\r\n"
        + "$13\r\nentries-added\r\n:7\r\n$11\r\nfirst-entry\r\n*2\r\n$3\r\n4-0\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n"
        + "$10\r\nlast-entry\r\n*2\r\n$3\r\n5-1\r\n*2\r\n$1\r\na\r\n$1\r\nc\r\n"

    @Test func resp2AndResp3() throws {
        for reply in ["*12\r\n" + Self.fields, "%6\r\n" + Self.fields] {
            let info = try RedisStreamInfo(fromRESP: token(reply))
            #expect(info == RedisStreamInfo(length: 2, lastGeneratedID: "5-1", entriesAdded: 7))
        }
        // Redis before 7: no entries-added.
        let old = try RedisStreamInfo(fromRESP: token("*4\r\n$6\r\nlength\r\n:0\r\n$17\r\nlast-generated-id\r\n$3\r\n0-0\r\n"))
        #expect(old.entriesAdded == nil && old.lastGeneratedID == "0-0")
        #expect(throws: RESPDecodeError.self) { try RedisStreamInfo(fromRESP: token("*2\r\n$6\r\nlength\r\n:0\r\n")) }
        #expect(encoded(XINFOSTREAM(key: "s")) == resp("XINFO", "STREAM", "s"))
    }
}

/// `XINFO GROUPS`'s reply as RESP2 (flat pairs) and RESP3 (maps); a lag Redis cannot tell is null.
struct StreamGroupInfoDecodingTests {
    static func group(_ name: String, lag: String) -> String {
        "$4\r\nname\r\n$\(name.utf8.count)\r\n\(name)\r\n$9\r\nconsumers\r\n:1\r\n$7\r\npending\r\n:2\r\n"
            + "$17\r\nlast-delivered-id\r\n$3\r\n5-0\r\n$12\r\nentries-read\r\n:3\r\n$3\r\nlag\r\n\(lag)"
    }

    @Test func resp2AndResp3() throws {
        let resp2 = "*2\r\n*12\r\n" + Self.group("a", lag: ":4\r\n") + "*12\r\n" + Self.group("b", lag: "$-1\r\n")
        let resp3 = "*2\r\n%6\r\n" + Self.group("a", lag: ":4\r\n") + "%6\r\n" + Self.group("b", lag: "_\r\n")
        for reply in [resp2, resp3] {
            let groups = try [RedisStreamGroupInfo](fromRESP: token(reply))
            #expect(groups == [RedisStreamGroupInfo(name: "a", pending: 2, lag: 4), RedisStreamGroupInfo(name: "b", pending: 2, lag: nil)])
        }
        #expect(encoded(XINFOGROUPS(key: "s")) == resp("XINFO", "GROUPS", "s"))
    }
}
