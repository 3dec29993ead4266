package io.attune.spark;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.time.Instant;
import java.time.ZoneOffset;
import java.util.ArrayDeque;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.spark.sql.ForeachWriter;
import org.apache.spark.sql.Row;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import redis.clients.jedis.DefaultJedisClientConfig;
import redis.clients.jedis.HostAndPort;
import redis.clients.jedis.Jedis;
import redis.clients.jedis.Pipeline;
import redis.clients.jedis.Response;
import redis.clients.jedis.exceptions.JedisNoScriptException;

/**
 * The online query's {@code foreach} writer for Spark's real-time mode, on the JVM
 * ({@code speed.realtime_writer: jvm}).
 *
 * <p>It writes exactly as {@code attune.online_store.OnlineStoreWriter.apply} and {@code
 * refresh_trending} do, and with the same Lua scripts: the Python side hands it one JSON
 * document ({@code speed_layer.jvm_writer.writer_spec}) holding the scripts' sources, their
 * constant parameters ({@code OnlineStore.script_params()}), the key templates ({@code
 * attune.keys.KeyTemplate} parts), the trending windows and the live experiment counts' rule. So
 * the feature logic stays in the Lua scripts and in Python; this class only moves rows to them:
 *
 * <ol>
 *   <li>the items' catalog genres are read from their meta keys;
 *   <li>one write-script call per user applies the user's new interactions (in event time,
 *       interaction id order) and answers with the user's outbox;
 *   <li>the aggregate script counts the outbox entries it has not counted yet, then the entries
 *       are removed from the outboxes; and when anything was applied, the trending script
 *       recomputes the trending windows.
 * </ol>
 *
 * <p>The trending windows are recomputed at most every {@code trending_interval_ms} (and when an
 * epoch ends), not after every group: a recomputation unions every slice of every window, and
 * with groups of a row or two it would cost Redis more than the writes; the windows are an hour
 * and a day long, so a second changes nothing anyone sees. At the end of an epoch the store is
 * the same as the Python writer leaves it.
 *
 * <p>Latency. Spark calls {@link #process} for each row as it arrives; a drain thread applies
 * whatever rows are waiting as one group, at once: a lone row is written within a few Redis
 * round trips, and under load the groups grow instead of the queue. {@link #close} waits until
 * every row is written and fails the task if a write failed, so an epoch is committed only
 * after its rows are in Redis; a replayed epoch changes nothing (the scripts are idempotent per
 * interaction).
 *
 * <p>One Redis only: the Python side refuses this writer with {@code redis.cluster: true}.
 */
public final class RedisOnlineWriter extends ForeachWriter<Row> {
  private static final long serialVersionUID = 1L;
  private static final Logger LOG = LoggerFactory.getLogger(RedisOnlineWriter.class);
  private static final ObjectMapper JSON = new ObjectMapper();

  private final String specJson;

  private transient Spec spec;
  private transient Jedis jedis;
  private transient Map<String, String> shas;
  private transient ArrayDeque<Input> pending;
  private transient Thread drainer;
  private transient boolean closing;
  private transient boolean discard;
  private transient volatile Throwable failure;
  private transient long rows;
  private transient long applied;
  private transient long groups;
  private transient boolean trendingDue;
  private transient long trendingAt;

  /** {@code spec}: the JSON document of {@code speed_layer.jvm_writer.writer_spec}. */
  public RedisOnlineWriter(String spec) {
    this.specJson = spec;
    Spec.parse(spec); // a broken document fails on the driver, not in every task
  }

  /** One row of the online query: {@code (user, ts_ms, iid, payload)}. */
  record Input(String user, long t, String iid, String payload) {}

  /** The writer's settings, parsed from the Python side's document. */
  static final class Spec {
    String host;
    int port;
    int db;
    int timeoutMs;
    Map<String, String> scripts = new HashMap<>();
    String params;
    List<List<String>> userKeys = new ArrayList<>();
    List<String> outbox;
    List<String> itemMeta;
    List<String> itemStats;
    List<String> trendSlice;
    List<String> trending;
    List<String> expLive;
    List<String> expLiveUsers;
    String aggSeen;
    String meta;
    String popular;
    List<Long> windowsS = new ArrayList<>();
    int slices;
    Pattern pattern;
    Map<String, String> liveCounts = new HashMap<>();
    String noExperiment;
    int usersPerPipeline;
    int maxPending;
    long trendingIntervalMs;

    static Spec parse(String text) {
      try {
        JsonNode n = JSON.readTree(text);
        Spec s = new Spec();
        JsonNode r = n.get("redis");
        s.host = r.get("host").asText();
        s.port = r.get("port").asInt();
        s.db = r.get("db").asInt();
        s.timeoutMs = r.path("timeout_ms").asInt(10000);
        n.get("scripts").properties().forEach(e -> s.scripts.put(e.getKey(), e.getValue().asText()));
        for (String name : new String[] {"apply", "aggregate", "trending"}) {
          if (!s.scripts.containsKey(name)) {
            throw new IllegalArgumentException("spec.scripts." + name + " is missing");
          }
        }
        s.params = n.get("params").asText();
        JsonNode k = n.get("keys");
        for (JsonNode t : k.get("user")) {
          s.userKeys.add(strings(t));
        }
        s.outbox = strings(k.get("outbox"));
        s.itemMeta = strings(k.get("item_meta"));
        s.itemStats = strings(k.get("item_stats"));
        s.trendSlice = strings(k.get("trend_slice"));
        s.trending = strings(k.get("trending"));
        s.expLive = strings(k.get("exp_live"));
        s.expLiveUsers = strings(k.get("exp_live_users"));
        s.aggSeen = k.get("agg_seen").asText();
        s.meta = k.get("meta").asText();
        s.popular = k.get("popular").asText();
        for (JsonNode w : n.get("trending").get("windows_s")) {
          s.windowsS.add(w.asLong());
        }
        s.slices = n.get("trending").get("slices").asInt();
        JsonNode live = n.get("live");
        s.pattern = Pattern.compile(live.get("pattern").asText());
        live.get("counts").properties().forEach(e -> s.liveCounts.put(e.getKey(), e.getValue().asText()));
        s.noExperiment = live.get("none").asText();
        s.usersPerPipeline = n.path("users_per_pipeline").asInt(500);
        s.maxPending = n.path("max_pending").asInt(5000);
        s.trendingIntervalMs = n.path("trending_interval_ms").asLong(1000);
        return s;
      } catch (Exception e) {
        throw new IllegalArgumentException("RedisOnlineWriter: bad spec: " + e, e);
      }
    }

    private static List<String> strings(JsonNode array) {
      List<String> out = new ArrayList<>();
      for (JsonNode x : array) {
        out.add(x.asText());
      }
      return out;
    }
  }

  /** {@code parts[0] + ids[0] + parts[1] + ...}: a key of a {@code KeyTemplate} family. */
  static String key(List<String> parts, String... ids) {
    if (ids.length != parts.size() - 1) {
      throw new IllegalArgumentException("template " + parts + " takes " + (parts.size() - 1) + " id(s)");
    }
    StringBuilder b = new StringBuilder(parts.get(0));
    for (int i = 0; i < ids.length; i++) {
      b.append(ids[i]).append(parts.get(i + 1));
    }
    return b.toString();
  }

  // ------------------------------------------------------------------------------------------
  // ForeachWriter

  @Override
  public boolean open(long partitionId, long epochId) {
    spec = Spec.parse(specJson);
    jedis =
        new Jedis(
            new HostAndPort(spec.host, spec.port),
            DefaultJedisClientConfig.builder()
                .database(spec.db)
                .connectionTimeoutMillis(spec.timeoutMs)
                .socketTimeoutMillis(spec.timeoutMs)
                .build());
    loadScripts();
    pending = new ArrayDeque<>();
    closing = false;
    discard = false;
    failure = null;
    rows = applied = groups = 0;
    trendingDue = false;
    trendingAt = 0;
    drainer = new Thread(this::drain, "attune-online-writer-p" + partitionId + "-e" + epochId);
    drainer.setDaemon(true);
    drainer.start();
    return true;
  }

  @Override
  public void process(Row row) {
    Input input =
        new Input(
            row.getString(row.fieldIndex("user")),
            ((Number) row.get(row.fieldIndex("ts_ms"))).longValue(),
            row.getString(row.fieldIndex("iid")),
            row.getString(row.fieldIndex("payload")));
    synchronized (this) {
      while (pending.size() >= spec.maxPending && failure == null) {
        waitQuietly();
      }
      rethrow();
      pending.add(input);
      rows++;
      notifyAll();
    }
  }

  @Override
  public void close(Throwable error) {
    if (drainer == null) {
      return;
    }
    synchronized (this) {
      closing = true;
      discard = error != null; // the epoch is retried anyway
      notifyAll();
    }
    try {
      drainer.join();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    } finally {
      drainer = null;
      jedis.close();
    }
    LOG.debug("online writer: {} rows in {} groups, {} applied", rows, groups, applied);
    if (error == null) {
      synchronized (this) {
        rethrow();
      }
    }
  }

  private void waitQuietly() {
    try {
      wait();
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new IllegalStateException("interrupted while waiting for Redis", e);
    }
  }

  private void rethrow() {
    if (failure != null) {
      throw new IllegalStateException("writing the online store failed: " + failure, failure);
    }
  }

  /** The drain thread: applies the rows waiting, as one group, until closed and empty. */
  private void drain() {
    while (true) {
      List<Input> group;
      synchronized (this) {
        while (pending.isEmpty() && !closing) {
          try {
            wait();
          } catch (InterruptedException e) {
            return;
          }
        }
        if (discard) {
          return;
        }
        group = new ArrayList<>(pending);
        pending.clear();
        notifyAll();
      }
      try {
        if (group.isEmpty()) { // closing: the epoch ends with the trending windows up to date
          if (trendingDue) {
            refreshTrending();
          }
          return;
        }
        write(group);
        groups++;
      } catch (Throwable t) {
        synchronized (this) {
          failure = t;
          notifyAll();
        }
        return;
      }
    }
  }

  // ------------------------------------------------------------------------------------------
  // The three steps (attune.online_store.OnlineStoreWriter.apply) and the trending refresh

  private void loadScripts() {
    shas = new HashMap<>();
    for (Map.Entry<String, String> e : spec.scripts.entrySet()) {
      shas.put(e.getKey(), jedis.scriptLoad(e.getValue()));
    }
  }

  /** Apply one group; after a Redis restart (scripts gone) load them and apply it again. */
  void write(List<Input> group) throws Exception {
    try {
      applyGroup(group);
    } catch (JedisNoScriptException e) {
      loadScripts();
      applyGroup(group); // every step is safe to repeat
    }
  }

  private void applyGroup(List<Input> group) throws Exception {
    Map<String, List<Input>> byUser = new LinkedHashMap<>();
    Map<String, Set<String>> items = new HashMap<>();
    for (Input in : group) {
      String payload = in.payload();
      if (payload.contains("\"rc\":")) {
        payload = livePayload(payload);
      }
      byUser.computeIfAbsent(in.user(), u -> new ArrayList<>()).add(new Input(in.user(), in.t(), in.iid(), payload));
      if (payload.contains("\"it\":")) {
        items.computeIfAbsent(in.user(), u -> new LinkedHashSet<>()).add(JSON.readTree(payload).get("it").asText());
      }
    }
    long appliedHere = 0;
    List<String> users = new ArrayList<>(byUser.keySet());
    for (int start = 0; start < users.size(); start += spec.usersPerPipeline) {
      List<String> chunk = users.subList(start, Math.min(users.size(), start + spec.usersPerPipeline));
      Set<String> wanted = new TreeSet<>();
      for (String u : chunk) {
        wanted.addAll(items.getOrDefault(u, Set.of()));
      }
      Map<String, String> genres = genres(wanted);
      // step 2: the write script, once per user
      Pipeline pipe = jedis.pipelined();
      List<Response<Object>> replies = new ArrayList<>();
      for (String u : chunk) {
        List<Input> batch = byUser.get(u);
        batch.sort(Comparator.comparingLong(Input::t).thenComparing(Input::iid).thenComparing(Input::payload));
        StringBuilder body = new StringBuilder("[");
        for (int i = 0; i < batch.size(); i++) {
          body.append(i == 0 ? "" : ",").append(batch.get(i).payload());
        }
        body.append(']');
        StringBuilder catalog = new StringBuilder("{");
        for (String item : items.getOrDefault(u, Set.of())) {
          String g = genres.get(item);
          if (g != null) {
            catalog.append(catalog.length() == 1 ? "" : ",").append(JSON.writeValueAsString(item)).append(':').append(g);
          }
        }
        catalog.append('}');
        List<String> keys = new ArrayList<>();
        for (List<String> t : spec.userKeys) {
          keys.add(key(t, u));
        }
        replies.add(pipe.evalsha(shas.get("apply"), keys, List.of(spec.params, body.toString(), catalog.toString())));
      }
      pipe.sync();
      Map<String, List<String>> outboxes = new LinkedHashMap<>();
      List<Map<String, String>> entries = new ArrayList<>();
      Long maxT = null;
      for (int i = 0; i < chunk.size(); i++) {
        List<?> reply = (List<?>) replies.get(i).get();
        appliedHere += ((Number) reply.get(0)).longValue();
        Object t = reply.get(3);
        if (t != null) {
          long v = Long.parseLong(t.toString());
          maxT = maxT == null ? v : Math.max(maxT, v);
        }
        List<?> outbox = (List<?>) reply.get(4);
        for (int n = 0; n + 1 < outbox.size(); n += 2) {
          String id = outbox.get(n).toString();
          outboxes.computeIfAbsent(chunk.get(i), x -> new ArrayList<>()).add(id);
          Map<String, String> entry = new LinkedHashMap<>();
          entry.put("i", id);
          entry.put("u", chunk.get(i));
          entry.put("e", outbox.get(n + 1).toString());
          entries.add(entry);
        }
      }
      // step 3: the aggregate script, then the outboxes are emptied of what it counted
      if (!entries.isEmpty() || maxT != null) {
        count(entries, maxT);
      }
      if (!outboxes.isEmpty()) {
        Pipeline clear = jedis.pipelined();
        for (Map.Entry<String, List<String>> e : outboxes.entrySet()) {
          clear.hdel(key(spec.outbox, e.getKey()), e.getValue().toArray(new String[0]));
        }
        clear.sync();
      }
    }
    applied += appliedHere;
    trendingDue |= appliedHere > 0;
    if (trendingDue && System.currentTimeMillis() - trendingAt >= spec.trendingIntervalMs) {
      refreshTrending();
    }
  }

  /** Step 1: the catalog genres (JSON text) of {@code items} that have them. */
  private Map<String, String> genres(Set<String> items) {
    Map<String, String> out = new HashMap<>();
    if (items.isEmpty()) {
      return out;
    }
    Pipeline pipe = jedis.pipelined();
    Map<String, Response<String>> replies = new LinkedHashMap<>();
    for (String item : items) {
      replies.put(item, pipe.hget(key(spec.itemMeta, item), "genres"));
    }
    pipe.sync();
    for (Map.Entry<String, Response<String>> e : replies.entrySet()) {
      String g = e.getValue().get();
      if (g != null && !g.isEmpty()) {
        out.put(e.getKey(), g);
      }
    }
    return out;
  }

  /** The aggregate script on outbox entries, declaring every key it will touch. */
  private void count(List<Map<String, String>> entries, Long maxT) throws Exception {
    LinkedHashSet<String> touched = new LinkedHashSet<>();
    for (Map<String, String> x : entries) {
      JsonNode e = JSON.readTree(x.get("e"));
      if (e.has("it")) {
        touched.add(key(spec.itemStats, e.get("it").asText()));
        for (JsonNode s : e.path("tr")) {
          String slice = s.asText();
          int colon = slice.indexOf(':');
          touched.add(key(spec.trendSlice, slice.substring(0, Math.max(colon, 0)), colon < 0 ? "" : slice.substring(colon + 1)));
        }
      }
      if (e.has("xk")) {
        touched.add(key(spec.expLive, e.get("xd").asText()));
        if ("impressions".equals(e.get("xk").asText())) {
          touched.add(key(spec.expLiveUsers, e.get("xd").asText(), e.get("xe").asText(), e.get("xv").asText()));
        }
      }
    }
    List<String> keys = new ArrayList<>(List.of(spec.aggSeen, spec.meta, spec.popular));
    keys.addAll(touched);
    jedis.evalsha(shas.get("aggregate"), keys, List.of(spec.params, JSON.writeValueAsString(entries), maxT == null ? "" : Long.toString(maxT)));
  }

  /** Every trending window as of the latest event time (again when another writer moved it). */
  private void refreshTrending() throws Exception {
    trendingDue = false;
    trendingAt = System.currentTimeMillis();
    for (int attempt = 0; attempt < 5; attempt++) {
      String raw = jedis.hget(spec.meta, "max_t");
      if (raw == null) {
        return;
      }
      long maxT = Long.parseLong(raw);
      Object answer =
          jedis.evalsha(
              shas.get("trending"),
              trendingKeys(maxT),
              List.of(Integer.toString(spec.slices), JSON.writeValueAsString(spec.windowsS), Long.toString(maxT)));
      if ("ok".equals(String.valueOf(answer))) {
        return;
      }
    }
    LOG.warn("trending not refreshed: the latest event time kept moving; the next write will");
  }

  /** {@code OnlineStore.trending_keys}: the meta hash, then per window its destination and its slices. */
  List<String> trendingKeys(long maxT) {
    List<String> out = new ArrayList<>(List.of(spec.meta));
    for (long w : spec.windowsS) {
      long sliceMs = Math.floorDiv(w * 1000, spec.slices);
      long last = Math.floorDiv(maxT, sliceMs);
      out.add(key(spec.trending, Long.toString(w)));
      for (long s = last - spec.slices + 1; s <= last; s++) {
        out.add(key(spec.trendSlice, Long.toString(w), Long.toString(s)));
      }
    }
    return out;
  }

  /**
   * {@code attune.online_store.live_payload}: the row with its recommendation id ({@code rc})
   * replaced by what the write script counts for today's live experiment counts. The rule's data
   * (the counted types, the id pattern, the name of "no experiment") comes from Python; the
   * pattern is searched as Spark's {@code regexp_extract} does (the batch layer's reading).
   */
  String livePayload(String payload) throws Exception {
    ObjectNode row = (ObjectNode) JSON.readTree(payload);
    JsonNode rec = row.remove("rc");
    String type = row.path("y").asText("");
    long t = row.path("t").asLong(0);
    String kind = spec.liveCounts.get(type);
    if (kind != null && rec != null && !rec.isNull() && !rec.asText().isEmpty()) {
      String experiment = spec.noExperiment;
      String variant = spec.noExperiment;
      Matcher m = spec.pattern.matcher(rec.asText());
      if (m.find()) {
        if (m.groupCount() >= 1 && m.group(1) != null && !m.group(1).isEmpty()) {
          experiment = m.group(1);
        }
        if (m.groupCount() >= 2 && m.group(2) != null && !m.group(2).isEmpty()) {
          variant = m.group(2);
        }
      }
      row.put("xd", Instant.ofEpochMilli(t).atZone(ZoneOffset.UTC).toLocalDate().toString());
      row.put("xe", experiment);
      row.put("xv", variant);
      row.put("xk", kind);
    }
    return JSON.writeValueAsString(row);
  }
}
