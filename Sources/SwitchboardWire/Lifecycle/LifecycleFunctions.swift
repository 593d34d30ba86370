import NIOCore
import Redis

/// The Redis Functions of presence and lifecycle events (library `switchboard_lifecycle`,
/// loaded like ``HistoryFunctions`` on every command connection).
///
/// Each function writes the events to the stream (`KEYS[1]`) and updates presence in the same
/// atomic step, so the stream and presence never disagree. Keys (with the default prefix
/// `switchboard:`):
///
/// | key | type | holds |
/// | --- | --- | --- |
/// | `switchboard:presence:user:<user>` | hash | the user's live sessions: session → instance |
/// | `switchboard:presence:gen:<user>` | string | the user's generation counter: starts at Redis's time in µs, +1 per event (expires a day after its last event) |
/// | `switchboard:presence:dest:<destination>` | hash | subscribed sessions: session → subscriptions |
/// | `switchboard:presence:dest-users:<destination>` | hash | subscribed users: user → sessions |
/// | `switchboard:presence:instances` | sorted set | registries by their last lease renewal (server ms) |
/// | `switchboard:presence:lease:<registry>` | string | the lease of a registry (expires `ttl` after its renewal) |
/// | `switchboard:presence:sessions:<registry>` | hash | the registry of one instance process: session → user (`''`: anonymous) |
/// | `switchboard:presence:subs:<session>` | hash | the session's subscriptions: id → destination |
/// | `switchboard:presence:<destination>` | channel | join/leave notices (``PresenceNotice``), published only while an instance listens |
/// | `switchboard:presence:applied:<registry>` | hash | per event loop, the last batch applied (retries are skipped; kept a day after a reap, a minute after a leave; one older than the batch before an arriving one means Redis went back to older data; `n.5`: batch n, marked when a loss was found) |
/// | `switchboard:presence:reap:<registry>`, `…:reaping:<registry>` | hash, string | a dead registry being reaped, and the reaper's lock |
/// | `switchboard:presence:events-epoch:<stream>` | string | Redis's time in µs when the stream's `presence-reset` was written (`0`: none, the stream was older; missing: Redis lost its data, the next event writes one) |
/// | `switchboard:presence:lost:<registry>` | string | the number of the registry's last loss found (its data lost, or reaped), told to the instance until it says it has seen it |
///
/// A registry is named `<instance>~<incarnation>`, one per process: an instance restarted with
/// the same `instance.id` before its lease expired gets a new registry, and the old one is
/// reaped (`node-lost`) like any other whose lease expired. Events name the instance only.
///
/// Every change is idempotent: a session registers once (`HSETNX`), an unknown session's
/// facts are ignored, so a retried batch, a late disconnect or a reaped session is never
/// counted twice. `user-offline` follows only when the user's hash of sessions is empty.
public enum LifecycleFunctions: RedisFunctionLibrary {
    /// The library's source, for `FUNCTION LOAD REPLACE`.
    public static let library = #"""
        #!lua name=switchboard_lifecycle

        local function now_ms()
          local t = redis.call('TIME')
          return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        end

        local function now_us()
          local t = redis.call('TIME')
          return tonumber(t[1]) * 1000000 + tonumber(t[2])
        end

        -- A registry is named <instance>~<incarnation>: one per process, so a restarted
        -- instance with the same id never mixes its sessions with those of its previous life.
        local function name_of(reg)
          return string.match(reg, '^(.*)~[^~]*$') or reg
        end

        local function context(stream, p, maxlen, types)
          local c = {stream = stream, p = p, maxlen = maxlen, written = 0, all = (types == '' or types == '*'), types = {}}
          for t in string.gmatch(types or '', '[^,]+') do c.types[t] = true end
          return c
        end

        -- Before the first event written while Redis holds no trace of earlier ones (the first
        -- ever, or after Redis lost its data: the stream, presence and this marker with it), a
        -- presence-reset: the sessions of before ended without events, so a consumer forgets
        -- what it derived from older events (gen: below it) and reads presence again. Written
        -- whatever `types` says; an events stream deleted alone (presence kept) gets none, nor
        -- does a stream entries were ever added to (the marker is new: written by a version
        -- before it; entries-added, not XLEN: consumers may XDEL what they handled).
        local function write_reset(c, instance)
          local now = now_us()
          local us, ms = string.format('%.0f', now), string.format('%.0f', math.floor(now / 1000))
          local a = {'XADD', c.stream, 'MAXLEN', '~', c.maxlen, '*', 'type', 'presence-reset'}
          if instance then a[#a + 1] = 'instance'; a[#a + 1] = instance end
          a[#a + 1] = 'time'; a[#a + 1] = ms; a[#a + 1] = 'gen'; a[#a + 1] = us
          redis.call(unpack(a))
          return us
        end

        local function reset_once(c)
          if c.reset_checked then return end
          c.reset_checked = true
          local marker = c.p .. 'presence:events-epoch:' .. c.stream
          if redis.call('EXISTS', marker) == 1 then return end
          if redis.call('EXISTS', c.stream) == 1 then
            local info = redis.call('XINFO', 'STREAM', c.stream)
            for i = 1, #info - 1, 2 do
              if info[i] == 'entries-added' and info[i + 1] > 0 then
                redis.call('SET', marker, '0')
                return
              end
            end
          end
          redis.call('SET', marker, write_reset(c, nil))
        end

        local function emit(c, kind, session, user, instance, dest, reason, sub, t)
          if not c.all and not c.types[kind] then return end
          reset_once(c)
          local a = {'XADD', c.stream, 'MAXLEN', '~', c.maxlen, '*', 'type', kind}
          local function add(n, v) if v and v ~= '' then a[#a + 1] = n; a[#a + 1] = v end end
          add('session', session); add('user', user); add('instance', instance); add('destination', dest)
          add('reason', reason); add('subscription', sub); add('time', t)
          if user and user ~= '' then
            -- The next generation is at least Redis's time in microseconds, so generations
            -- keep increasing after a day without events, after Redis lost its data, and after
            -- it went back to an older copy of it (a failover to a replica behind, a restart
            -- from an older file): a counter +1 from the restored value repeated generations
            -- a consumer had applied.
            local g = c.p .. 'presence:gen:' .. user
            local n = redis.call('INCR', g)
            local now = now_us()
            if n < now then
              n = now
              redis.call('SET', g, string.format('%.0f', n))
            end
            add('gen', string.format('%.0f', n))
            redis.call('PEXPIRE', g, 86400000)
          end
          redis.call(unpack(a))
          c.written = c.written + 1
        end

        -- A join or leave for the watchers of dest (x-presence): one PUBLISH on its presence
        -- channel, whatever the audience; none while no instance listens there.
        local function notify(c, kind, dest, session, user, inst, reason, t)
          local ch = c.p .. 'presence:' .. dest
          if tonumber(redis.call('PUBSUB', 'NUMSUB', ch)[2]) == 0 then return end
          local m = {event = kind, destination = dest, session = session, instance = inst, time = tonumber(t)}
          if user and user ~= '' then m.user = user end
          if reason and reason ~= '' then m.reason = reason end
          redis.call('PUBLISH', ch, cjson.encode(m))
        end

        local function sub_remove(c, inst, session, user, sid, dest, t, quiet, reason)
          local dk = c.p .. 'presence:dest:' .. dest
          if not quiet then emit(c, 'unsubscribed', session, user, inst, dest, nil, sid, t) end
          if redis.call('HINCRBY', dk, session, -1) <= 0 then
            redis.call('HDEL', dk, session)
            notify(c, 'leave', dest, session, user, inst, reason, t)
            if user ~= '' then
              local uk = c.p .. 'presence:dest-users:' .. dest
              if redis.call('HINCRBY', uk, user, -1) <= 0 then redis.call('HDEL', uk, user) end
            end
            if redis.call('HLEN', dk) == 0 then emit(c, 'destination-vacated', session, user, inst, dest, nil, nil, t) end
          end
        end

        local function connect(c, reg, inst, session, user, t)
          if redis.call('HSETNX', reg, session, user) == 0 then return end
          emit(c, 'connected', session, user, inst, nil, nil, nil, t)
          if user ~= '' then
            local uk = c.p .. 'presence:user:' .. user
            redis.call('HSET', uk, session, inst)
            if redis.call('HLEN', uk) == 1 then emit(c, 'user-online', session, user, inst, nil, nil, nil, t) end
          end
        end

        local function disconnect(c, reg, inst, session, reason, t)
          local user = redis.call('HGET', reg, session)
          if not user then return end
          redis.call('HDEL', reg, session)
          emit(c, 'disconnected', session, user, inst, nil, reason, nil, t)
          local sk = c.p .. 'presence:subs:' .. session
          local subs = redis.call('HGETALL', sk)
          for i = 1, #subs, 2 do sub_remove(c, inst, session, user, subs[i], subs[i + 1], t, true, reason) end
          redis.call('DEL', sk)
          if user ~= '' then
            local uk = c.p .. 'presence:user:' .. user
            redis.call('HDEL', uk, session)
            if redis.call('HLEN', uk) == 0 then emit(c, 'user-offline', session, user, inst, nil, reason, nil, t) end
          end
        end

        local function subscribe(c, reg, inst, session, sid, dest, t)
          local user = redis.call('HGET', reg, session)
          if not user then return end
          if redis.call('HSETNX', c.p .. 'presence:subs:' .. session, sid, dest) == 0 then return end
          emit(c, 'subscribed', session, user, inst, dest, nil, sid, t)
          local dk = c.p .. 'presence:dest:' .. dest
          if redis.call('HINCRBY', dk, session, 1) == 1 then
            notify(c, 'join', dest, session, user, inst, nil, t)
            if user ~= '' then redis.call('HINCRBY', c.p .. 'presence:dest-users:' .. dest, user, 1) end
            if redis.call('HLEN', dk) == 1 then emit(c, 'destination-occupied', session, user, inst, dest, nil, nil, t) end
          end
        end

        local function unsubscribe(c, reg, inst, session, sid, t)
          local user = redis.call('HGET', reg, session)
          if not user then return end
          local sk = c.p .. 'presence:subs:' .. session
          local dest = redis.call('HGET', sk, sid)
          if not dest then return end
          redis.call('HDEL', sk, sid)
          sub_remove(c, inst, session, user, sid, dest, t, false, 'unsubscribe')
        end

        -- The loss of a registry (its data lost, or the instance reaped) is numbered by the
        -- time it was found (Redis's ms, above the caller's `seen`): the instance passes the
        -- number of the last loss it acted on (`seen`), so a call built before it acted on one
        -- loss (held while the connection was down) still numbers the next one above it. The
        -- number is kept in presence:lost:<registry> and told to every call of the instance
        -- that has not seen it, so an answer lost on the way (the call retried, or answered
        -- -1) is given again. Once seen, the key stays as a marker: loops whose last batch
        -- Redis forgot with the rest are not taken for a new loss. Old gateways pass no
        -- `seen`, and are told -2 / 0 as before.
        local function told_lost(p, inst, seen)
          local t = math.max(now_ms(), seen + 1)
          redis.call('SET', p .. 'presence:lost:' .. inst, tostring(t))
          return t
        end

        local function start_reap(p, inst)
          local rk = p .. 'presence:reap:' .. inst
          local reg = p .. 'presence:sessions:' .. inst
          if redis.call('EXISTS', rk) == 0 and redis.call('EXISTS', reg) == 1 then redis.call('RENAME', reg, rk) end
        end

        -- KEYS[1] stream; ARGV prefix, instance, maxlen, types, loop, batch, then per fact:
        -- kind (c|d|s|u), session, user, subscription, destination or reason, time. A first
        -- fact of kind k (ignored by older versions) carries the instance's state: known (1:
        -- Redis applied one of its batches before, on any loop) and seen (the number of the
        -- last loss it acted on).
        -- Events written; -1: applied before; lost: -2 (without k), or -(1000 + the loss's
        -- number) while the instance has not seen it.
        local function events(keys, args)
          local p, inst = args[1], args[2]
          local c = context(keys[1], p, args[3], args[4])
          local applied = p .. 'presence:applied:' .. inst
          local raw = redis.call('HGET', applied, args[5])
          -- 'n.5': batch n, marked when a loss was found (see below): still a retry's guard,
          -- no longer a sign of another loss. A number, so that an older library loaded
          -- meanwhile (a rolling upgrade) still reads it: n.5 skips the retries of n, as n did.
          local marked = raw and string.find(raw, '.', 1, true) ~= nil
          local last = math.floor(tonumber(raw or '0'))
          local batch = tonumber(args[6])
          local known, seen = false, nil
          if args[7] == 'k' then known, seen = args[8] == '1', tonumber(args[9]) end
          local told = 0
          if seen then told = tonumber(redis.call('GET', p .. 'presence:lost:' .. inst) or '0') end
          if batch <= last then
            if seen and told > seen then return -(1000 + told) end
            return -1
          end
          -- A batch of an instance Redis does not know (any more): the registry was lost
          -- (Redis lost its data) or reaped. Applied all the same; the answer tells the instance
          -- to close its sessions, which reconnect and register again. A loop's later batch
          -- whose earlier one Redis forgot says so too (another loop may have registered the
          -- instance again), unless that loss was told already.
          local zs = p .. 'presence:instances'
          local lost = (batch > 1 or known) and not redis.call('ZSCORE', zs, inst)
          local forgot = seen and not lost and batch > 1 and not raw and told == 0
          -- A loop sends a batch only once Redis applied the one before: a last batch older
          -- than that means Redis went back to older data (a restart from an older snapshot, a
          -- failover to a replica behind). What it holds of this instance's sessions is stale
          -- (sessions gone since stay online, the others are missing): it is reaped as
          -- node-lost by the instance itself (claim), whose sessions reconnect and register again.
          local behind = raw and not marked and batch > last + 1
          if forgot or behind then
            lost = true
            -- The sessions of this instance that connected after the data Redis went back to
            -- are closed without events (nothing of them is left to reap): a presence-reset
            -- of the instance says so (once: the other loops' batches are marked below).
            reset_once(c)
            write_reset(c, name_of(inst))
            -- The other loops' last batches may be as old: marked, or each would find the
            -- same loss again (numbered anew, closing the sessions again). Not deleted: a
            -- batch applied since and retried (its answer lost) must still be skipped.
            local fields = redis.call('HGETALL', applied)
            for i = 1, #fields, 2 do
              if fields[i] ~= args[5] and not string.find(fields[i + 1], '.', 1, true) then
                redis.call('HSET', applied, fields[i], fields[i + 1] .. '.5')
              end
            end
          end
          if lost then
            -- Reaped by the instance itself (claim): its lock taken now, or a renewal finding
            -- the lease gone with it (Redis went back past it) would take it for a second loss.
            if redis.call('EXISTS', p .. 'presence:reap:' .. inst) == 0 and redis.call('EXISTS', p .. 'presence:sessions:' .. inst) == 1 then
              redis.call('SET', p .. 'presence:reaping:' .. inst, inst, 'NX', 'PX', 30000)
            end
            start_reap(p, inst)
          end
          if lost and seen then told = told_lost(p, inst, seen) end
          redis.call('HSET', applied, args[5], args[6])
          -- Kept a day after a reap (see reap): not once the instance is back.
          redis.call('PERSIST', applied)
          -- Known to reapers from its first batch on, even if it dies before renewing its lease.
          redis.call('ZADD', zs, 'NX', now_ms(), inst)
          local reg = p .. 'presence:sessions:' .. inst
          local name = name_of(inst)
          for i = 7, #args - 5, 6 do
            local kind, session, user, sid, extra, t = args[i], args[i + 1], args[i + 2], args[i + 3], args[i + 4], args[i + 5]
            if kind == 'c' then connect(c, reg, name, session, user, t)
            elseif kind == 'd' then disconnect(c, reg, name, session, extra, t)
            elseif kind == 's' then subscribe(c, reg, name, session, sid, extra, t)
            elseif kind == 'u' then unsubscribe(c, reg, name, session, sid, t)
            end
          end
          if seen and told > seen then return -(1000 + told) end
          if lost then return -2 end
          return c.written
        end

        -- ARGV prefix, instance, ttl, known (1: renewed before), seen (the number of the last
        -- loss the instance acted on; absent from older versions). 1: held; lost (reaped, or
        -- Redis lost its data): 0 without seen, else -(1000 + the loss's number) until the
        -- instance has seen it.
        local function renew(keys, args)
          local p, inst = args[1], args[2]
          local seen = tonumber(args[5] or '')
          local lease = p .. 'presence:lease:' .. inst
          local had = redis.call('EXISTS', lease)
          local zs = p .. 'presence:instances'
          -- Being reaped by another instance (not by itself: it reaps its own old sessions a
          -- dead reaper left, see claim), or reaped.
          local holder = redis.call('GET', p .. 'presence:reaping:' .. inst)
          local lost = args[4] == '1' and had == 0 and ((holder and holder ~= inst)
            or (not holder and redis.call('EXISTS', p .. 'presence:reap:' .. inst) == 1) or not redis.call('ZSCORE', zs, inst))
          redis.call('SET', lease, '1', 'PX', tonumber(args[3]))
          redis.call('ZADD', zs, now_ms(), inst)
          if seen then
            local told = tonumber(redis.call('GET', p .. 'presence:lost:' .. inst) or '0')
            if lost then told = told_lost(p, inst, seen) end
            if told > seen then return -(1000 + told) end
            return 1
          end
          if lost then return 0 end
          return 1
        end

        -- ARGV prefix, me, ttl. 1 when another instance's lease expired (not renewed for the
        -- ttl and its lease key gone, as claim sees it), else 0.
        local function others_expired(keys, args)
          local p, me = args[1], args[2]
          local limit = now_ms() - tonumber(args[3])
          for _, inst in ipairs(redis.call('ZRANGEBYSCORE', p .. 'presence:instances', '-inf', '(' .. limit, 'LIMIT', 0, 10)) do
            if inst ~= me and redis.call('EXISTS', p .. 'presence:lease:' .. inst) == 0 then return 1 end
          end
          return 0
        end

        -- ARGV prefix, me, ttl, grace, target ('' : any expired instance; else this one,
        -- leaving on purpose). The instance to reap (its lock now held by me), or ''.
        local function claim(keys, args)
          local p, me, target = args[1], args[2], args[5]
          if target and target ~= '' then
            redis.call('DEL', p .. 'presence:lease:' .. target)
            redis.call('SET', p .. 'presence:reaping:' .. target, me, 'PX', 30000)
            start_reap(p, target)
            return target
          end
          local limit = now_ms() - tonumber(args[3]) - tonumber(args[4])
          local candidates = redis.call('ZRANGEBYSCORE', p .. 'presence:instances', '-inf', '(' .. limit, 'LIMIT', 0, 10)
          for _, inst in ipairs(candidates) do
            if inst ~= me and redis.call('EXISTS', p .. 'presence:lease:' .. inst) == 0 then
              local lock = p .. 'presence:reaping:' .. inst
              -- A lock already mine: my reap of it stopped halfway (an error); go on with it.
              if redis.call('GET', lock) == me or redis.call('SET', lock, me, 'NX', 'PX', 30000) then
                redis.call('SET', lock, me, 'PX', 30000)
                start_reap(p, inst)
                return inst
              end
            end
          end
          -- My own old sessions, left by a reaper that stopped halfway while I was away (I came
          -- back and renewed, so nobody claims me): I finish their reap.
          if redis.call('EXISTS', p .. 'presence:reap:' .. me) == 1 and redis.call('EXISTS', p .. 'presence:lease:' .. me) == 1 then
            local lock = p .. 'presence:reaping:' .. me
            -- Mine already: taken when a batch found a loss (see events).
            if redis.call('GET', lock) == me or redis.call('SET', lock, me, 'NX', 'PX', 30000) then
              redis.call('SET', lock, me, 'PX', 30000)
              return me
            end
          end
          return ''
        end

        -- KEYS[1] stream; ARGV prefix, dead instance, maxlen, types, me, count, reason.
        -- Sessions left to reap; -1: the lock is not mine (any more).
        local function reap(keys, args)
          local p, inst, me = args[1], args[2], args[5]
          local lock = p .. 'presence:reaping:' .. inst
          if redis.call('GET', lock) ~= me then return -1 end
          redis.call('PEXPIRE', lock, 30000)
          local c = context(keys[1], p, args[3], args[4])
          local rk = p .. 'presence:reap:' .. inst
          local t = tostring(now_ms())
          local sessions = redis.call('HRANDFIELD', rk, tonumber(args[6]))
          for _, session in ipairs(sessions) do disconnect(c, rk, name_of(inst), session, args[7], t) end
          local left = redis.call('HLEN', rk)
          -- My own old sessions (not my leave, which drains): the live registry, its lease and
          -- its place among the instances are not the reap's, even if my lease lapsed meanwhile.
          if left == 0 and inst == me and args[7] ~= 'drain' then
            redis.call('DEL', lock)
          elseif left == 0 and redis.call('EXISTS', p .. 'presence:lease:' .. inst) == 0 then
            local reg = p .. 'presence:sessions:' .. inst
            if redis.call('EXISTS', reg) == 1 then
              redis.call('RENAME', reg, rk)
              return redis.call('HLEN', rk)
            end
            redis.call('DEL', lock, p .. 'presence:lost:' .. inst)
            -- The batches applied are kept a day after a reap, a minute after a leave: a batch of
            -- the instance whose answer it never got, sent again, is not applied twice (after a
            -- leave, a retry of the stopping process's flush; deleted, it registered the session
            -- and the instance again, to be reaped later as node-lost).
            local applied = p .. 'presence:applied:' .. inst
            redis.call('PEXPIRE', applied, args[7] == 'drain' and 60000 or 86400000)
            redis.call('ZREM', p .. 'presence:instances', inst)
          elseif left == 0 then
            redis.call('DEL', lock)
          end
          return left
        end

        -- ARGV prefix, kind (user|destination), name, limit. user: online (0|1), then
        -- session, instance pairs; destination: sessions, then up to limit users.
        local function presence(keys, args)
          local p, kind, name = args[1], args[2], args[3]
          if kind == 'user' then
            local s = redis.call('HGETALL', p .. 'presence:user:' .. name)
            local out = {#s > 0 and 1 or 0}
            for i = 1, #s do out[#out + 1] = s[i] end
            return out
          end
          local out = {redis.call('HLEN', p .. 'presence:dest:' .. name)}
          local scan = redis.call('HSCAN', p .. 'presence:dest-users:' .. name, 0, 'COUNT', tonumber(args[4]))
          local fields = scan[2]
          local limit = tonumber(args[4])
          for i = 1, #fields, 2 do
            if #out - 1 >= limit then break end
            out[#out + 1] = fields[i]
          end
          return out
        end

        redis.register_function('switchboard_events', events)
        redis.register_function('switchboard_lease_renew', renew)
        redis.register_function('switchboard_lease_claim', claim)
        redis.register_function{function_name = 'switchboard_lease_others_expired', callback = others_expired, flags = {'no-writes'}}
        redis.register_function('switchboard_lease_reap', reap)
        redis.register_function{function_name = 'switchboard_presence', callback = presence, flags = {'no-writes'}}
        """#
}
