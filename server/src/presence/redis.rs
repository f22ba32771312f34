//! The Redis [`Presence`]: members are seen from every node; a node that dies has its members
//! expire after the TTL.
//!
//! Per room two keys: `<prefix>presence:m:{<room>}` (hash: client id → member JSON) and
//! `<prefix>presence:h:{<room>}` (sorted set of holders `<node>|<client id>`, scored by the Unix
//! millisecond at which the hold runs out). A node holding a live connection keeps its hold at
//! now + TTL (on `join` and `touch`); when its last local connection of a member leaves, the
//! hold is set to now + grace, so a reconnect to any node within the grace is not leave + join.
//! `reap` (every node, often) runs one Lua script per room that removes run-out holds and, for
//! a member with no hold left, deletes it and reports it: the script is atomic, so exactly one
//! node announces each leave. A node that dies stops refreshing, so its holds run out after
//! the TTL. The set `<prefix>presence:rooms` lists rooms to reap.
//!
//! **Redis Cluster**: the `{<room>}` hash tag puts a room's two keys in one slot, so each
//! script touches one shard; the rooms set lives wherever its own slot is, and is updated by
//! separate commands (`join` and `touch` add the room, `reap` removes it once both keys are
//! gone; a `join` racing that removal is re-added by the next `touch`).
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! use std::time::Duration;
//! use tidewire_server::presence::{redis::RedisPresence, Presence};
//! let p = RedisPresence::connect("redis://127.0.0.1:6379", "app1:", Duration::from_secs(5), Duration::from_secs(60)).await?;
//! assert!(p.members("r").await?.is_empty());
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use tidewire_protocol::Member;

use super::Presence;
use crate::redis_conn::{self, redis_error, Conn};
use crate::{Error, Result};

const JOIN: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return old
";

const REAP: &str = r"
local gone = {'0'}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if #expired > 0 then
  for _, h in ipairs(expired) do redis.call('ZREM', KEYS[2], h) end
  local left = {}
  for _, h in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do left[string.sub(h, 28)] = true end
  for _, h in ipairs(expired) do
    local cid = string.sub(h, 28)
    if not left[cid] then
      local m = redis.call('HGET', KEYS[1], cid)
      if m then
        redis.call('HDEL', KEYS[1], cid)
        table.insert(gone, m)
      end
    end
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  gone[1] = '1'
end
return gone
";

#[derive(Default)]
struct Local {
    /// (room, client id) → local connections holding it.
    holds: HashMap<(String, String), HashSet<String>>,
    /// connection → what it holds.
    by_conn: HashMap<String, HashSet<(String, String)>>,
}

/// Presence in Redis.
pub struct RedisPresence {
    conn: Conn,
    prefix: String,
    node: String,
    grace: Duration,
    ttl: Duration,
    local: Mutex<Local>,
    join: redis::Script,
    reap: redis::Script,
}

fn now_ms() -> i64 {
    crate::clock::now().1
}

impl RedisPresence {
    /// Connects to `url` (one Redis or a cluster, see [`redis_conn`]); keys are named with `prefix`. Members leave `grace` after their last
    /// connection, or `ttl` after they were last seen (by any node).
    pub async fn connect(
        url: &str,
        prefix: &str,
        grace: Duration,
        ttl: Duration,
    ) -> Result<RedisPresence> {
        let conn = redis_conn::connect(url).await?;
        Ok(RedisPresence {
            conn,
            prefix: prefix.to_owned(),
            node: ulid::Ulid::generate().to_string(),
            grace,
            ttl,
            local: Mutex::new(Local::default()),
            join: redis::Script::new(JOIN),
            reap: redis::Script::new(REAP),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn members_key(&self, room: &str) -> String {
        format!("{}presence:m:{{{room}}}", self.prefix)
    }

    fn holders_key(&self, room: &str) -> String {
        format!("{}presence:h:{{{room}}}", self.prefix)
    }

    fn rooms_key(&self) -> String {
        format!("{}presence:rooms", self.prefix)
    }

    fn holder(&self, client_id: &str) -> String {
        format!("{}|{client_id}", self.node)
    }

    fn key_ttl_ms(&self) -> i64 {
        ((self.ttl + self.grace).as_millis() as i64).saturating_mul(4)
    }

    async fn hold_until(&self, room: &str, client_id: &str, until_ms: i64) -> Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("ZADD")
            .arg(self.holders_key(room))
            .arg("XX")
            .arg(until_ms)
            .arg(self.holder(client_id))
            .query_async::<i64>(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}

fn parse(json: &str) -> Result<Member> {
    serde_json::from_str(json)
        .map_err(|e| Error::Internal(format!("stored member is not JSON: {e}")))
}

#[async_trait]
impl Presence for RedisPresence {
    async fn join(&self, room: &str, conn: &str, member: Member) -> Result<bool> {
        {
            let mut local = self.lock();
            let key = (room.to_owned(), member.client_id.clone());
            local
                .holds
                .entry(key.clone())
                .or_default()
                .insert(conn.to_owned());
            local
                .by_conn
                .entry(conn.to_owned())
                .or_default()
                .insert(key);
        }
        let json = serde_json::to_string(&member)
            .map_err(|e| Error::Internal(format!("member is not JSON: {e}")))?;
        let mut c = self.conn.clone();
        let old: Option<String> = self
            .join
            .key(self.members_key(room))
            .key(self.holders_key(room))
            .arg(&member.client_id)
            .arg(&json)
            .arg(self.holder(&member.client_id))
            .arg(now_ms() + self.ttl.as_millis() as i64)
            .arg(self.key_ttl_ms())
            .invoke_async(&mut c)
            .await
            .map_err(redis_error)?;
        let _: i64 = c.sadd(self.rooms_key(), room).await.map_err(redis_error)?;
        Ok(match old {
            None => true,
            Some(old) => parse(&old).map_or(true, |old| old != member),
        })
    }

    async fn leave(&self, room: &str, conn: &str, client_id: &str) -> Result<()> {
        let released = {
            let mut local = self.lock();
            let key = (room.to_owned(), client_id.to_owned());
            if let Some(set) = local.by_conn.get_mut(conn) {
                set.remove(&key);
                if set.is_empty() {
                    local.by_conn.remove(conn);
                }
            }
            match local.holds.get_mut(&key) {
                Some(conns) => {
                    conns.remove(conn);
                    if conns.is_empty() {
                        local.holds.remove(&key);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if released {
            self.hold_until(room, client_id, now_ms() + self.grace.as_millis() as i64)
                .await?;
        }
        Ok(())
    }

    async fn touch(&self, conn: &str) -> Result<()> {
        let held: Vec<(String, String)> = self
            .lock()
            .by_conn
            .get(conn)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        if held.is_empty() {
            return Ok(());
        }
        let until = now_ms() + self.ttl.as_millis() as i64;
        let rooms: HashSet<&String> = held.iter().map(|(r, _)| r).collect();
        let mut sadd = redis::cmd("SADD");
        sadd.arg(self.rooms_key()).arg(rooms);
        let mut commands = vec![(self.rooms_key(), sadd)];
        for (room, client_id) in &held {
            let (holders, members) = (self.holders_key(room), self.members_key(room));
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&holders)
                .arg("XX")
                .arg(until)
                .arg(self.holder(client_id));
            let mut expire_h = redis::cmd("PEXPIRE");
            expire_h.arg(&holders).arg(self.key_ttl_ms());
            let mut expire_m = redis::cmd("PEXPIRE");
            expire_m.arg(&members).arg(self.key_ttl_ms());
            commands.push((holders.clone(), zadd));
            commands.push((holders, expire_h));
            commands.push((members, expire_m));
        }
        redis_conn::run_all(&self.conn, commands).await
    }

    async fn members(&self, room: &str) -> Result<Vec<Member>> {
        let mut c = self.conn.clone();
        let all: Vec<(String, String)> = c
            .hgetall(self.members_key(room))
            .await
            .map_err(redis_error)?;
        let mut members = all
            .iter()
            .map(|(_, json)| parse(json))
            .collect::<Result<Vec<_>>>()?;
        members.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(members)
    }

    async fn reap(&self) -> Result<Vec<(String, Member)>> {
        let mut c = self.conn.clone();
        let rooms: Vec<String> = c.smembers(self.rooms_key()).await.map_err(redis_error)?;
        let now = now_ms();
        let mut gone = Vec::new();
        for room in rooms {
            let left: Vec<String> = self
                .reap
                .key(self.members_key(&room))
                .key(self.holders_key(&room))
                .arg(now)
                .invoke_async(&mut c)
                .await
                .map_err(redis_error)?;
            let mut left = left.into_iter();
            if left.next().as_deref() == Some("1") {
                let _: i64 = c.srem(self.rooms_key(), &room).await.map_err(redis_error)?;
            }
            for json in left {
                gone.push((room.clone(), parse(&json)?));
            }
        }
        Ok(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn member(id: &str, meta: serde_json::Value) -> Member {
        Member {
            client_id: id.into(),
            user: None,
            meta,
        }
    }

    async fn two_nodes(
        grace_ms: u64,
        ttl_ms: u64,
    ) -> Option<(String, RedisPresence, RedisPresence)> {
        if !crate::testing::redis::ensure().await {
            return None;
        }
        two_nodes_on(&crate::testing::redis::url(), grace_ms, ttl_ms).await
    }

    async fn two_nodes_on(
        url: &str,
        grace_ms: u64,
        ttl_ms: u64,
    ) -> Option<(String, RedisPresence, RedisPresence)> {
        let prefix = format!("tw-test-{}:", ulid::Ulid::generate());
        let url = url.to_owned();
        let open = || {
            RedisPresence::connect(
                &url,
                &prefix,
                Duration::from_millis(grace_ms),
                Duration::from_millis(ttl_ms),
            )
        };
        let (a, b) = (open().await.unwrap(), open().await.unwrap());
        Some((prefix, a, b))
    }

    #[tokio::test]
    async fn members_are_seen_from_every_node_and_a_reconnect_within_grace_is_quiet() {
        let Some((prefix, a, b)) = two_nodes(300, 60_000).await else {
            return;
        };
        assert!(a.join("r", "c1", member("ada", json!({}))).await.unwrap());
        assert!(b
            .join("r", "c2", member("bob", json!({"n": 1})))
            .await
            .unwrap());
        let ids: Vec<String> = b
            .members("r")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.client_id)
            .collect();
        assert_eq!(ids, ["ada", "bob"]);
        // ada moves from node a to node b within the grace.
        a.leave("r", "c1", "ada").await.unwrap();
        assert!(!b.join("r", "c3", member("ada", json!({}))).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(a.reap().await.unwrap().is_empty());
        assert!(b.reap().await.unwrap().is_empty());
        assert_eq!(a.members("r").await.unwrap().len(), 2);
        // bob leaves for good: reported once, by one node.
        b.leave("r", "c2", "bob").await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (ga, gb) = (a.reap().await.unwrap(), b.reap().await.unwrap());
        assert_eq!(ga.len() + gb.len(), 1);
        assert_eq!(a.members("r").await.unwrap().len(), 1);
        crate::testing::redis::clean(&prefix).await;
    }

    #[tokio::test]
    async fn a_silent_node_s_members_expire_after_the_ttl() {
        let Some((prefix, a, b)) = two_nodes(100, 300).await else {
            return;
        };
        a.join("r", "c1", member("ada", json!({}))).await.unwrap();
        b.join("r", "c2", member("bob", json!({}))).await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            b.touch("c2").await.unwrap();
        }
        // Node a never touched again (as if it died): ada expires, bob stays.
        let gone = b.reap().await.unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].1.client_id, "ada");
        let ids: Vec<String> = b
            .members("r")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.client_id)
            .collect();
        assert_eq!(ids, ["bob"]);
        crate::testing::redis::clean(&prefix).await;
    }

    #[tokio::test]
    async fn on_a_redis_cluster_a_room_s_keys_share_a_slot_and_members_expire() {
        let Some(cluster) = crate::testing::redis_cluster::Cluster::start() else {
            return;
        };
        let (_prefix, a, b) = two_nodes_on(&cluster.spec(), 100, 300).await.unwrap();
        assert_eq!(
            crate::redis_conn::slot(&a.members_key("r")),
            crate::redis_conn::slot(&a.holders_key("r"))
        );
        a.join("r", "c1", member("ada", json!({}))).await.unwrap();
        b.join("r", "c2", member("bob", json!({}))).await.unwrap();
        b.join("s", "c2", member("bob", json!({}))).await.unwrap();
        assert_eq!(a.members("r").await.unwrap().len(), 2);
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            b.touch("c2").await.unwrap();
        }
        let gone = b.reap().await.unwrap();
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert_eq!(gone[0].1.client_id, "ada");
        b.leave("r", "c2", "bob").await.unwrap();
        b.leave("s", "c2", "bob").await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(a.reap().await.unwrap().len(), 2);
        assert!(a.members("s").await.unwrap().is_empty());
    }
}
