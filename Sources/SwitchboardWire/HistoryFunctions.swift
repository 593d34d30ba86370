import NIOCore
import Redis

/// The Redis Functions that keep each destination's history and publish to it in one atomic
/// step (library `switchboard`, loaded by every gateway at start and by every command
/// connection when it connects, so a Redis that restarted without persistence has it again
/// before the first `FCALL`; a call that still finds it missing loads it and runs again).
///
/// Keys of a destination `D` (with the default prefix `switchboard:`), all in one hash slot:
///
/// | key | type | holds |
/// | --- | --- | --- |
/// | `switchboard:{D}:seq` | hash | `epoch`, `n` (the newest sequence number), `server`, `run`, `node` (replication id, run id and cluster node id of the primary that numbered last), `max-length`, `ttl` |
/// | `switchboard:{D}:log` | stream | entry `<n>-0` per message: `t` (ms), `m` (the positioned envelope) |
/// | `switchboard:{D}:once:<token>` | string | a publish already recorded (inbound routes; idempotency keys: `api:<key>`, `stomp:<user>\0<key>`), 10 min |
///
/// `switchboard_publish` numbers the message (`HINCRBY n`), appends it to the log (trimmed to
/// `max-length`, expiring `ttl` after the last publish) and `PUBLISH`es it on `switchboard:dest:D`
/// with an `x-position: <epoch>:<n>` header, so no instance sees a message the history lacks or
/// the other way round. A destination without an `epoch` gets a new one (from the server's
/// clock) and an empty log: that is how a client learns history was lost. The sequence hash
/// outlives the log (it expires after a day without publishes), so a client of a quiet
/// destination still resumes with nothing missed.
///
/// Positions are never issued twice. After a failover, the promoted replica's copy of `n` may
/// be behind the positions its old primary issued and did not replicate; after a restart, the
/// server's RDB or AOF file may lack its last writes. So the first call on a server that was
/// promoted (`master_replid2` in `INFO replication`) and did not number the destination last,
/// or on the same server (cluster node) restarted since it numbered it last (a new `run_id`),
/// moves `n` ahead by 1,000,000: subscribers see a hole in `x-position` (and a resume across it
/// is `x-recovered: false`) instead of new messages that reuse seen positions and are dropped
/// as copies. A caller whose Redis loses nothing at a restart (`appendfsync always`) says so
/// (``HistoryPublish/durable``, ``HistoryRead/durable``): a restart then keeps `n`. A slot moved
/// to another node keeps `n` too.
///
/// `switchboard_spublish` is the same for Redis Cluster: it `SPUBLISH`es on the shard channel
/// `switchboard:{D}:dest`, in the slot of the destination's keys, so it runs on the primary
/// owning them.
///
/// Backends that publish with `redis-cli` get the same guarantees with
/// `FCALL switchboard_publish 1 'switchboard:{/topic/x}' 'hello'` (on a cluster,
/// `redis-cli -c FCALL switchboard_spublish 3 'switchboard:{/topic/x}' 'switchboard:{/topic/x}:seq'
/// 'switchboard:{/topic/x}:log' 'hello'`): a payload that is not an envelope is the body
/// (`content-type: text/plain`). The function reads the destination from the first key; the
/// others are declared so that Redis Cluster holds a call off while their slot migrates (see
/// ``HistoryPublish/keysAffected``).
public enum HistoryFunctions: RedisFunctionLibrary {
    /// The library's source, for `FUNCTION LOAD REPLACE`.
    public static let library = #"""
        #!lua name=switchboard

        local function parts(base)
          local open = string.find(base, '{', 1, true)
          if not open or string.sub(base, -1) ~= '}' then return nil end
          return string.sub(base, 1, open - 1), string.sub(base, open + 1, -2)
        end

        local function now_ms()
          local t = redis.call('TIME')
          return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end

        -- Positions must never be issued twice: subscribers would drop the new messages as
        -- copies of ones they have. Two things can move a destination's sequence back below
        -- positions already issued, and both move it ahead by GAP on the destination's first
        -- use afterwards, so subscribers see a hole in x-position (which history cannot fill)
        -- instead of silently reused positions:
        -- * a failover: a promoted replica (master_replid2 set) inherits a sequence that may lack
        --   writes its old primary acknowledged and did not replicate;
        -- * a restart: the server (the same cluster node) came back from its RDB or AOF file,
        --   which may lack the last writes (an RDB snapshot, appendfsync everysec). Unless the
        --   caller says restarts lose nothing (appendfsync always: the 'durable' argument).
        -- A slot moved to another cluster node (MIGRATE) keeps its sequence intact: no GAP.
        local GAP = 1000000
        local NEVER_PROMOTED = '0000000000000000000000000000000000000000'

        -- This server process's run id (new at every start) and cluster node id, read once per
        -- load of the library (INFO server costs as much as the rest of a publish); a restart
        -- loads the library afresh.
        local this_server = nil

        -- The run id, replication ids (a promotion changes them at run time) and node id.
        local function server_ids()
          if not this_server then
            local info = redis.call('INFO', 'server', 'cluster')
            local node = ''
            if string.match(info, 'cluster_enabled:1') then node = redis.call('CLUSTER', 'MYID') end
            this_server = {string.match(info, 'run_id:(%x+)') or '', node}
          end
          local info = redis.call('INFO', 'replication')
          return this_server[1], string.match(info, 'master_replid:(%x+)') or '',
            string.match(info, 'master_replid2:(%x+)') or NEVER_PROMOTED, this_server[2]
        end

        local function epoch_of(seq, log, durable)
          local stored = redis.call('HMGET', seq, 'epoch', 'server', 'run', 'node')
          local run, server, previous, node = server_ids()
          if stored[1] then
            if stored[2] ~= server or stored[3] ~= run or (stored[4] or '') ~= node then
              local promoted = stored[2] and stored[2] ~= server and previous ~= NEVER_PROMOTED
              local restarted = stored[3] and stored[3] ~= run and (stored[4] or '') == node and not durable
              if promoted or restarted then redis.call('HINCRBY', seq, 'n', GAP) end
              redis.call('HSET', seq, 'server', server, 'run', run, 'node', node)
            end
            return stored[1]
          end
          local t = redis.call('TIME')
          local epoch = string.format('%08x%05x', tonumber(t[1]), tonumber(t[2]))
          redis.call('DEL', log)
          redis.call('HSET', seq, 'epoch', epoch, 'n', 0, 'server', server, 'run', run, 'node', node)
          redis.call('PEXPIRE', seq, 86400000)
          return epoch
        end

        local function escape(s)
          return (string.gsub(s, '[\\\r\n:]', {['\\'] = '\\\\', ['\r'] = '\\r', ['\n'] = '\\n', [':'] = '\\c'}))
        end

        local function record(keys, args, sharded)
          local prefix, destination = parts(keys[1] or '')
          if not prefix then return redis.error_reply('ERR switchboard_publish: the key must be <prefix>{<destination>}') end
          local payload = args[1]
          if not payload then return redis.error_reply('ERR switchboard_publish: no payload') end
          local seq, log = keys[1] .. ':seq', keys[1] .. ':log'
          -- Recorded only once the message is (a function is not rolled back when a later
          -- call fails: a token set first would call the caller's retry a duplicate).
          local once = (args[4] and args[4] ~= '') and (keys[1] .. ':once:' .. args[4]) or nil
          if once and redis.call('EXISTS', once) == 1 then return {'', '0', '0'} end
          local epoch = epoch_of(seq, log, args[5] == '1')
          local stored = redis.call('HMGET', seq, 'max-length', 'ttl')
          local maxlen = tonumber(args[2] or '') or tonumber(stored[1]) or 100
          local ttl = tonumber(args[3] or '') or tonumber(stored[2]) or 300000
          if tostring(maxlen) ~= stored[1] or tostring(ttl) ~= stored[2] then
            redis.call('HSET', seq, 'max-length', tostring(maxlen), 'ttl', tostring(ttl))
          end
          local n = redis.call('HINCRBY', seq, 'n', 1)
          local position = epoch .. ':' .. n
          local message
          if string.byte(payload, 1) == 1 and string.sub(payload, 2, 9) == 'MESSAGE\n' then
            message = '\1MESSAGE\nx-position:' .. position .. '\n' .. string.sub(payload, 10)
          else
            message = '\1MESSAGE\ndestination:' .. escape(destination) .. '\nx-position:' .. position
              .. '\ncontent-type:text/plain\ncontent-length:' .. #payload .. '\n\n' .. payload .. '\0'
          end
          redis.call('XADD', log, 'MAXLEN', maxlen, n .. '-0', 't', now_ms(), 'm', message)
          redis.call('PEXPIRE', log, ttl)
          redis.call('PEXPIRE', seq, math.max(ttl, 86400000))
          local receivers
          if sharded then
            receivers = redis.call('SPUBLISH', keys[1] .. ':dest', message)
          else
            receivers = redis.call('PUBLISH', prefix .. 'dest:' .. destination, message)
          end
          if once then redis.call('SET', once, '1', 'PX', 600000) end
          return {epoch, tostring(n), tostring(receivers)}
        end

        local function publish(keys, args) return record(keys, args, false) end
        local function spublish(keys, args) return record(keys, args, true) end

        local function read(keys, args)
          local prefix = parts(keys[1] or '')
          if not prefix then return redis.error_reply('ERR switchboard_read: the key must be <prefix>{<destination>}') end
          local seq, log = keys[1] .. ':seq', keys[1] .. ':log'
          local epoch = epoch_of(seq, log, args[4] == '1')
          local n = tonumber(redis.call('HGET', seq, 'n')) or 0
          local out = {epoch, tostring(n)}
          local count = tonumber(args[2] or '') or 0
          local from
          if args[1] == 'after' then from = count + 1
          elseif args[1] == 'last' then from = n - count + 1
          else return out end
          if from < 1 then from = 1 end
          if from > n then return out end
          -- 'after <n> <upto>': one page, the entries after n through upto.
          local last = '+'
          local upto = args[1] == 'after' and tonumber(args[3] or '') or nil
          if upto then
            if upto < from then return out end
            last = upto .. '-0'
          end
          local cutoff = now_ms() - (tonumber(redis.call('HGET', seq, 'ttl')) or 300000)
          local entries = redis.call('XRANGE', log, from .. '-0', last)
          for _, entry in ipairs(entries) do
            local fields = entry[2]
            if tonumber(fields[2]) >= cutoff then table.insert(out, fields[4]) end
          end
          -- A page with no entry at all (trimmed, or the positions a failover skipped), asked
          -- with 'next': '' and the sequence of the first entry after it, so the reader goes
          -- on from there in one step (older readers do not ask, and get no marker).
          if upto and #entries == 0 and args[5] == 'next' then
            local after_page = redis.call('XRANGE', log, '(' .. upto .. '-0', '+', 'COUNT', 1)[1]
            if after_page then
              table.insert(out, '')
              table.insert(out, string.match(after_page[1], '^(%d+)'))
            end
          end
          return out
        end

        -- The shared position of an inbound stream route (switchboard_inbound_cursor), a hash:
        -- 'through', the newest entry id an instance read past (moved forward only), and
        -- 'from', where the first instance to store it started (entries up to it were not
        -- necessarily read by any). '' reads it. With a third argument, the stream went back:
        -- from and through move back to the id given, if through is that third argument now. Replies
        -- through, from (or '') and the server's time in ms. Kept ttl ms after the last call.
        local function id_before(a, b)
          local am, as = string.match(a, '^(%d+)-(%d+)$')
          local bm, bs = string.match(b, '^(%d+)-(%d+)$')
          if not am or not bm then return false end
          local function less(x, y) if #x ~= #y then return #x < #y end return x < y end
          if am ~= bm then return less(am, bm) end
          return less(as, bs)
        end

        local function stream_id(s)
          if s and string.match(s, '^%d+%-%d+$') then return s end
          return nil
        end

        local function inbound_cursor(keys, args)
          local kind = redis.call('TYPE', keys[1]).ok
          if kind == 'string' then
            -- The first form of the position: one id.
            local id = stream_id(redis.call('GET', keys[1]))
            redis.call('DEL', keys[1])
            if id then redis.call('HSET', keys[1], 'from', id, 'through', id) end
          elseif kind ~= 'hash' and kind ~= 'none' then
            redis.call('DEL', keys[1])
          end
          local stored = redis.call('HMGET', keys[1], 'from', 'through')
          local from, through = stream_id(stored[1]), stream_id(stored[2])
          local id = stream_id(args[1])
          if id and not (from and through) then
            redis.call('HSET', keys[1], 'from', id, 'through', id)
            from, through = id, id
          elseif id and id_before(through, id) then
            redis.call('HSET', keys[1], 'through', id)
            through = id
          elseif id and stream_id(args[3]) == through and id_before(id, through) then
            -- Entries up to the stream's new end are taken as read; none after it was yet.
            redis.call('HSET', keys[1], 'from', id, 'through', id)
            from, through = id, id
          end
          if through then redis.call('PEXPIRE', keys[1], tonumber(args[2]) or 604800000) end
          return {through or '', from or '', tostring(now_ms())}
        end

        redis.register_function{function_name = 'switchboard_inbound_cursor', callback = inbound_cursor, flags = {'allow-oom'}}
        redis.register_function('switchboard_publish', publish)
        redis.register_function('switchboard_spublish', spublish)
        redis.register_function('switchboard_read', read)
        """#
}

/// `FCALL switchboard_publish 3 <prefix>{<destination>} <…>:seq <…>:log <payload> <max-length> <ttl-ms> <once> <durable>`
/// (4 keys with `<…>:once:<once>`):
/// records and publishes one message (see ``HistoryFunctions``); with `sharded`,
/// `switchboard_spublish` (Redis Cluster).
public struct HistoryPublish: RedisCommand {
    /// Where the message was recorded; nil when `once` was recorded already.
    public typealias Response = HistoryPublishResult
    public var key: String
    public var payload: ByteBuffer
    public var maxLength: Int?
    public var ttlMilliseconds: Int64?
    /// Records the message only if no publish with the same token (per destination, 10 minutes) was.
    public var once: String?
    /// Publishes on the destination's shard channel (`SPUBLISH`, Redis Cluster) instead of its channel.
    public var sharded: Bool
    /// The server loses nothing it acknowledged when it restarts (`appendonly yes`,
    /// `appendfsync always`): a restart keeps the sequence instead of moving it ahead.
    public var durable: Bool

    public init(
        key: String, payload: ByteBuffer, maxLength: Int? = nil, ttlMilliseconds: Int64? = nil, once: String? = nil, sharded: Bool = false,
        durable: Bool = false
    ) {
        self.durable = durable
        self.key = key
        self.payload = payload
        self.maxLength = maxLength
        self.ttlMilliseconds = ttlMilliseconds
        self.once = once
        self.sharded = sharded
    }

    /// The keys the call touches, declared (after `key`, which the function reads them from):
    /// while their slot migrates, Redis Cluster holds the call off (`TRYAGAIN`, retried by the
    /// client) until the migration ends, since `key` itself never exists. With `key` alone the
    /// migrating node sent the call to the importing one (`ASK`), which lacked the sequence: a
    /// new epoch there, and the `MIGRATE` of the sequence then failed (`BUSYKEY`).
    public var keysAffected: [String] {
        var keys = [key, key + ":seq", key + ":log"]
        if let once, !once.isEmpty { keys.append(key + ":once:" + once) }
        return keys
    }

    public func encode(into encoder: inout RESPCommandEncoder) {
        let keys = keysAffected
        encoder.encodeArray(count: 8 + keys.count)
        encoder.encodeBulk("FCALL")
        encoder.encodeBulk(sharded ? "switchboard_spublish" : "switchboard_publish")
        encoder.encodeBulk(keys.count)
        for key in keys { encoder.encodeBulk(key) }
        encoder.encodeBulk(payload)
        encoder.encodeBulk(maxLength.map(String.init) ?? "")
        encoder.encodeBulk(ttlMilliseconds.map { String($0) } ?? "")
        encoder.encodeBulk(once ?? "")
        encoder.encodeBulk(durable ? "1" : "")
    }
}

/// The reply of ``HistoryPublish``.
public struct HistoryPublishResult: RESPTokenDecodable, Sendable, Hashable {
    /// Nil when the publish's `once` token had been recorded already.
    public var position: StreamPosition?
    /// How many Redis subscribers (gateway instances with interest) got it.
    public var receivers: Int

    public init(fromRESP token: RESPToken) throws {
        let parts = try [String](fromRESP: token)
        guard parts.count == 3, let sequence = UInt64(parts[1]), let receivers = Int(parts[2]) else {
            throw RESPDecodeError(token: token, expected: "[epoch, n, receivers]")
        }
        self.position = parts[0].isEmpty ? nil : StreamPosition(epoch: parts[0], sequence: sequence)
        self.receivers = receivers
    }
}

/// `FCALL switchboard_read 3 <prefix>{<destination>} <…>:seq <…>:log <mode> <n> <upto> <durable> <next>`: where a destination's history
/// stands, and the messages kept after a sequence number or the last few.
public struct HistoryRead: RedisCommand {
    public enum Range: Sendable, Hashable {
        /// Only where history stands.
        case none
        /// Messages after this sequence number.
        case after(UInt64)
        /// The last `n` messages.
        case last(Int)
        /// The messages after `after` through `through` (one page of a long read).
        case page(after: UInt64, through: UInt64)
    }

    public typealias Response = HistoryReadResult
    public var key: String
    public var range: Range
    /// See ``HistoryPublish/durable``.
    public var durable: Bool

    public init(key: String, range: Range, durable: Bool = false) {
        self.key = key
        self.range = range
        self.durable = durable
    }

    /// See ``HistoryPublish/keysAffected``.
    public var keysAffected: [String] { [key, key + ":seq", key + ":log"] }

    public func encode(into encoder: inout RESPCommandEncoder) {
        encoder.encodeArray(count: 11)
        encoder.encodeBulk("FCALL")
        encoder.encodeBulk("switchboard_read")
        encoder.encodeBulk(3)
        encoder.encodeBulk(key)
        encoder.encodeBulk(key + ":seq")
        encoder.encodeBulk(key + ":log")
        switch range {
        case .none:
            encoder.encodeBulk("none")
            encoder.encodeBulk(0)
            encoder.encodeBulk("")
        case .after(let sequence):
            encoder.encodeBulk("after")
            encoder.encodeBulk(String(sequence))
            encoder.encodeBulk("")
        case .last(let count):
            encoder.encodeBulk("last")
            encoder.encodeBulk(count)
            encoder.encodeBulk("")
        case .page(let after, let through):
            encoder.encodeBulk("after")
            encoder.encodeBulk(String(after))
            encoder.encodeBulk(String(through))
        }
        encoder.encodeBulk(durable ? "1" : "")
        // A page asks where the next entry is when it holds none (``HistoryReadResult/nextEntry``).
        if case .page = range { encoder.encodeBulk("next") } else { encoder.encodeBulk("") }
    }
}

/// The reply of ``HistoryRead``.
public struct HistoryReadResult: RESPTokenDecodable, Sendable {
    /// The destination's newest position (sequence 0: nothing published in this epoch yet).
    public var position: StreamPosition
    /// The positioned envelopes read, oldest first (expired ones left out).
    public var envelopes: [ByteBuffer]
    /// A page with no entry at all: the sequence of the first entry after it (nil: none, or a
    /// library that does not say).
    public var nextEntry: UInt64?

    public init(fromRESP token: RESPToken) throws {
        let parts = try [ByteBuffer](fromRESP: token)
        guard parts.count >= 2, let sequence = UInt64(String(buffer: parts[1])) else {
            throw RESPDecodeError(token: token, expected: "[epoch, n, message...]")
        }
        self.position = StreamPosition(epoch: String(buffer: parts[0]), sequence: sequence)
        // An envelope is never empty: '' marks the next entry's sequence.
        if parts.count == 4, parts[2].readableBytes == 0 {
            guard let next = UInt64(String(buffer: parts[3])) else { throw RESPDecodeError(token: token, expected: "[epoch, n, '', next]") }
            self.envelopes = []
            self.nextEntry = next
        } else {
            self.envelopes = Array(parts.dropFirst(2))
        }
    }
}
