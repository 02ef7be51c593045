/*
 * netstash warm / netstash install — warm a profile's preload cache from a
 * signed manifest (URL or file) or install an offline bundle.
 *
 * On a terminal: a progress bar on stderr and a summary on stdout. With
 * --json (or when stdout is not a terminal and --json is given): one JSON
 * object per line on stdout, an event each, the last being
 * {"event": "done", ...} (fields in netstash-warm(1)).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"

typedef struct warm_ui {
  int json;
  int bar; /* progress bar on stderr */
  int verbose;
  int bar_drawn;
} warm_ui;

static void jprint(json_t *o) {
  json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
  fputc('\n', stdout);
  fflush(stdout);
  json_decref(o);
}

static const char *ev_name(netstash_warm_event ev) {
  switch (ev) {
  case NETSTASH_WARM_EV_MANIFEST:
    return "manifest";
  case NETSTASH_WARM_EV_RESOURCE_DONE:
    return "done";
  case NETSTASH_WARM_EV_RESOURCE_PRESENT:
    return "present";
  case NETSTASH_WARM_EV_RESOURCE_FAILED:
    return "failed";
  case NETSTASH_WARM_EV_RETRY:
    return "retry";
  case NETSTASH_WARM_EV_PROGRESS:
    return "progress";
  case NETSTASH_WARM_EV_PUBLISHED:
    return "published";
  case NETSTASH_WARM_EV_DONE:
    return "done";
  }
  return "?";
}

static void human_bytes(uint64_t b, char *out, size_t n) {
  if (b >= (1u << 20))
    snprintf(out, n, "%.1f MB", (double)b / 1048576.0);
  else if (b >= 1024)
    snprintf(out, n, "%.1f KB", (double)b / 1024.0);
  else
    snprintf(out, n, "%llu B", (unsigned long long)b);
}

static void draw_bar(netstash_warm *w, warm_ui *ui) {
  uint64_t need = netstash_warm_counter(w, NETSTASH_WARM_BYTES_NEEDED);
  uint64_t done = netstash_warm_counter(w, NETSTASH_WARM_BYTES_DONE);
  uint64_t nres = netstash_warm_counter(w, NETSTASH_WARM_RESOURCES);
  uint64_t rdone = netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_DONE) +
                   netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_PRESENT) +
                   netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_FAILED);
  uint64_t eta = netstash_warm_counter(w, NETSTASH_WARM_ETA_MS);
  double frac = need ? (double)(done > need ? need : done) / (double)need : 1.0;
  char a[32], b[32], bar[31];
  int fill = (int)(frac * 30.0);
  for (int i = 0; i < 30; i++)
    bar[i] = i < fill ? '#' : '-';
  bar[30] = '\0';
  human_bytes(done, a, sizeof(a));
  human_bytes(need, b, sizeof(b));
  fprintf(stderr, "\r[%s] %3d%%  %llu/%llu resources  %s/%s  ETA %llus   ", bar,
          (int)(frac * 100.0), (unsigned long long)rdone, (unsigned long long)nres, a, b,
          (unsigned long long)((eta + 999) / 1000));
  ui->bar_drawn = 1;
}

static void on_event(netstash_warm *w, netstash_warm_event ev, const char *url,
                     netstash_error err, void *ud) {
  warm_ui *ui = ud;
  if (ui->json) {
    json_t *o;
    if (ev == NETSTASH_WARM_EV_DONE)
      return; /* the summary line is printed after wait */
    if (ev == NETSTASH_WARM_EV_MANIFEST)
      o = json_pack("{s:s, s:s, s:I, s:s, s:I, s:I}", "event", "manifest", "id",
                    netstash_warm_manifest_id(w), "version",
                    (json_int_t)netstash_warm_manifest_version(w), "key_id",
                    netstash_warm_key_id(w), "resources",
                    (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_RESOURCES), "bytes",
                    (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_BYTES_TOTAL));
    else if (ev == NETSTASH_WARM_EV_PROGRESS)
      o = json_pack(
          "{s:s, s:I, s:I, s:I, s:I, s:I}", "event", "progress", "bytes_done",
          (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_BYTES_DONE), "bytes_needed",
          (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_BYTES_NEEDED), "resources_done",
          (json_int_t)(netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_DONE) +
                       netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_PRESENT)),
          "resources", (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_RESOURCES), "eta_ms",
          (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_ETA_MS));
    else if (ev == NETSTASH_WARM_EV_PUBLISHED)
      o = json_pack("{s:s, s:s, s:I}", "event", "published", "id", netstash_warm_manifest_id(w),
                    "version", (json_int_t)netstash_warm_manifest_version(w));
    else
      o = json_pack("{s:s, s:s, s:s, s:o}", "event", "resource", "url", url ? url : "", "status",
                    ev_name(ev),
                    "error", err ? json_string(netstash_error_name(err)) : json_null());
    jprint(o);
    return;
  }
  if (ev == NETSTASH_WARM_EV_RESOURCE_FAILED || (ui->verbose && ev == NETSTASH_WARM_EV_RETRY)) {
    if (ui->bar_drawn)
      fputc('\n', stderr);
    ui->bar_drawn = 0;
    fprintf(stderr, "%s %s: %s\n", ev == NETSTASH_WARM_EV_RETRY ? "retry" : "FAILED",
            url ? url : "", netstash_strerror(err));
  }
  if (ui->bar && (ev == NETSTASH_WARM_EV_PROGRESS || ev == NETSTASH_WARM_EV_RESOURCE_DONE ||
                  ev == NETSTASH_WARM_EV_RESOURCE_FAILED))
    draw_bar(w, ui);
}

static int run_warm(const char *name, const char *usage, int bundle, int argc, char **argv) {
  enum {
    O_PROFILE = 256,
    O_TRUST,
    O_CACERT,
    O_RESOLVE,
    O_JSON,
    O_UNSIGNED,
    O_CONC,
    O_MAXB,
    O_APPV,
    O_KERNV,
    O_DEVID,
    O_METERED,
    O_RETRIES,
    O_TIMEOUT,
    O_NOPROGRESS
  };
  static const struct option opts[] = {{"profile", required_argument, NULL, O_PROFILE},
                                       {"trust", required_argument, NULL, O_TRUST},
                                       {"cacert", required_argument, NULL, O_CACERT},
                                       {"resolve", required_argument, NULL, O_RESOLVE},
                                       {"json", no_argument, NULL, O_JSON},
                                       {"allow-unsigned", no_argument, NULL, O_UNSIGNED},
                                       {"concurrency", required_argument, NULL, O_CONC},
                                       {"max-bytes", required_argument, NULL, O_MAXB},
                                       {"app-version", required_argument, NULL, O_APPV},
                                       {"kernel-version", required_argument, NULL, O_KERNV},
                                       {"device-id", required_argument, NULL, O_DEVID},
                                       {"metered", no_argument, NULL, O_METERED},
                                       {"retries", required_argument, NULL, O_RETRIES},
                                       {"timeout", required_argument, NULL, O_TIMEOUT},
                                       {"no-progress", no_argument, NULL, O_NOPROGRESS},
                                       {"verbose", no_argument, NULL, 'v'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  const char *profile = NULL, *cacert = NULL, *appv = NULL, *kernv = NULL, *devid = NULL;
  const char *trust[16], *resolve[16];
  size_t ntrust = 0, nresolve = 0;
  int allow_unsigned = 0, metered = 0, c, rc = 0, progress = 1;
  unsigned long conc = 0, retries = 99;
  unsigned long long maxb = 0, timeout_s = 0;
  char *def = NULL, *end, cdetail[512] = "";
  warm_ui ui = {0, 0, 0, 0};
  netstash_options *o = NULL;
  netstash_ctx *ctx = NULL;
  netstash_warm *w = NULL;
  netstash_error err;

  optind = 1;
  while ((c = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
    switch (c) {
    case O_PROFILE:
      profile = optarg;
      break;
    case O_TRUST:
      if (ntrust == 16) {
        cli_error(name, "at most 16 --trust keys");
        return EXIT_USAGE;
      }
      trust[ntrust++] = optarg;
      break;
    case O_CACERT:
      cacert = optarg;
      break;
    case O_RESOLVE:
      if (nresolve == 16) {
        cli_error(name, "at most 16 --resolve entries");
        return EXIT_USAGE;
      }
      resolve[nresolve++] = optarg;
      break;
    case O_JSON:
      ui.json = 1;
      break;
    case O_UNSIGNED:
      allow_unsigned = 1;
      break;
    case O_CONC:
      conc = strtoul(optarg, &end, 10);
      if (*end || conc < 1 || conc > 256) {
        cli_error(name, "--concurrency wants 1..256, not \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case O_MAXB:
      maxb = strtoull(optarg, &end, 10);
      if (*end || !*optarg) {
        cli_error(name, "--max-bytes wants a number of bytes, not \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case O_RETRIES:
      retries = strtoul(optarg, &end, 10);
      if (*end || retries > 10) {
        cli_error(name, "--retries wants 0..10, not \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case O_TIMEOUT:
      timeout_s = strtoull(optarg, &end, 10);
      if (*end || !timeout_s || timeout_s > 3600) {
        cli_error(name, "--timeout wants 1..3600 seconds, not \"%s\"", optarg);
        return EXIT_USAGE;
      }
      break;
    case O_APPV:
      appv = optarg;
      break;
    case O_KERNV:
      kernv = optarg;
      break;
    case O_DEVID:
      devid = optarg;
      break;
    case O_METERED:
      metered = 1;
      break;
    case O_NOPROGRESS:
      progress = 0;
      break;
    case 'v':
      ui.verbose = 1;
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    default:
      fputs(usage, stderr);
      return EXIT_USAGE;
    }
  }
  if (optind + 1 != argc) {
    cli_error(name, optind == argc ? "missing %s" : "unexpected argument \"%s\"",
              optind == argc ? (bundle ? "BUNDLE" : "MANIFEST_URL|FILE") : argv[optind + 1]);
    fputs(usage, stderr);
    return EXIT_USAGE;
  }
  if (!ntrust && !allow_unsigned) {
    cli_error(name, "no --trust key: pass the publisher's public key (KEYFILE.pub), or "
                    "--allow-unsigned for development");
    return EXIT_USAGE;
  }
  ui.bar = !ui.json && progress && isatty(2);
  if (!profile)
    profile = def = cli_default_profile();

  err = netstash_options_new(&o);
  if (!err)
    err = netstash_options_set_profile_dir(o, profile);
  for (size_t k = 0; !err && k < ntrust; k++)
    err = netstash_options_add_trusted_key(o, trust[k]);
  if (!err && allow_unsigned)
    err = netstash_options_set_allow_unsigned(o, 1);
  if (!err && cacert)
    err = netstash_options_set_ca_file(o, cacert);
  if (!err && appv)
    err = netstash_options_set_app_version(o, appv);
  if (!err && kernv)
    err = netstash_options_set_kernel_version(o, kernv);
  if (!err && devid)
    err = netstash_options_set_device_id(o, devid);
  if (!err)
    err = netstash_ctx_new(&ctx, o, cdetail, sizeof(cdetail));
  if (err) {
    cli_error(name, "cannot open the profile %s: %s%s%s", profile, netstash_strerror(err),
              cdetail[0] ? ": " : "", cdetail);
    rc = cli_exit_code(err);
    goto out;
  }
  err = netstash_warm_new(ctx, argv[optind], &w);
  for (size_t k = 0; !err && k < nresolve; k++)
    err = netstash_warm_add_resolve(w, resolve[k]);
  if (!err && conc)
    err = netstash_warm_set_concurrency(w, (uint32_t)conc);
  if (!err && maxb)
    err = netstash_warm_set_max_bytes(w, maxb);
  if (!err && retries != 99)
    err = netstash_warm_set_retries(w, (uint32_t)retries);
  if (!err && timeout_s)
    err = netstash_warm_set_timeout_ms(w, (uint32_t)(timeout_s * 1000));
  if (!err && metered)
    err = netstash_warm_set_metered(w, 1);
  if (!err)
    err = netstash_warm_set_event_cb(w, on_event, &ui);
  if (!err)
    err = netstash_warm_start(w);
  if (!err)
    err = netstash_warm_wait(w, 0);
  if (ui.bar_drawn)
    fputc('\n', stderr);
  if (w) {
    uint64_t failed = netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_FAILED);
    const char *detail = netstash_warm_error_detail(w);
    if (ui.json) {
      json_t *j = json_pack(
          "{s:s, s:s, s:b, s:o, s:s, s:s, s:I, s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "event",
          "done", "source", argv[optind], "ok", err == NETSTASH_OK, "error",
          err ? json_string(netstash_error_name(err)) : json_null(), "message",
          detail[0] ? detail : netstash_strerror(err), "id", netstash_warm_manifest_id(w),
          "version", (json_int_t)netstash_warm_manifest_version(w), "published",
          netstash_warm_counter(w, NETSTASH_WARM_PUBLISHED) != 0, "resources",
          (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_RESOURCES), "fetched",
          (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_DONE), "present",
          (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_PRESENT), "failed",
          (json_int_t)failed, "requests", (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_REQUESTS),
          "bytes", (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_BYTES_DONE), "elapsed_ms",
          (json_int_t)netstash_warm_counter(w, NETSTASH_WARM_ELAPSED_MS));
      jprint(j);
    } else if (err == NETSTASH_OK) {
      char b[32];
      human_bytes(netstash_warm_counter(w, NETSTASH_WARM_BYTES_DONE), b, sizeof(b));
      printf("%s version %llu: %s; %llu fetched, %llu already held, %llu failed; %s in %llu "
             "requests, %.2f s\n",
             netstash_warm_manifest_id(w),
             (unsigned long long)netstash_warm_manifest_version(w),
             netstash_warm_counter(w, NETSTASH_WARM_PUBLISHED) ? "published"
             : detail[0]                                       ? detail
                                                               : "up to date",
             (unsigned long long)netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_DONE),
             (unsigned long long)netstash_warm_counter(w, NETSTASH_WARM_RESOURCES_PRESENT),
             (unsigned long long)failed, b,
             (unsigned long long)netstash_warm_counter(w, NETSTASH_WARM_REQUESTS),
             (double)netstash_warm_counter(w, NETSTASH_WARM_ELAPSED_MS) / 1000.0);
    }
    if (err != NETSTASH_OK)
      cli_error(name, "%s: %s", netstash_strerror(err), detail[0] ? detail : argv[optind]);
  } else {
    cli_error(name, "%s: %s", netstash_strerror(err), argv[optind]);
  }
  rc = err == NETSTASH_OK ? 0 : cli_exit_code(err);
out:
  netstash_warm_del(w);
  netstash_ctx_del(ctx);
  netstash_options_del(o);
  free(def);
  return rc;
}

int cmd_warm(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash warm MANIFEST_URL|FILE --profile DIR --trust PUBFILE [options]\n"
      "\n"
      "Fetches a signed preload manifest (its signature at URL/FILE + \".sig\"),\n"
      "verifies it against the pinned public key(s), downloads the bodies the\n"
      "profile does not hold yet, verifies each against its integrity and\n"
      "publishes the version atomically once every critical resource is held.\n"
      "\n"
      "  --profile DIR          profile directory (default ~/.local/share/netstash)\n"
      "  --trust PUBFILE        publisher's public key (repeatable; required unless\n"
      "                         --allow-unsigned)\n"
      "  --allow-unsigned       accept a manifest without signature (development)\n"
      "  --cacert FILE          trust the CAs in FILE instead of the system store\n"
      "  --resolve H:P:A        pin HOST:PORT to ADDRESS (repeatable)\n"
      "  --concurrency N        parallel fetches (default 16)\n"
      "  --max-bytes N          download budget for this warm\n"
      "  --retries N            retries per resource (default 2)\n"
      "  --timeout S            per-resource timeout in seconds (default 60)\n"
      "  --app-version V, --kernel-version V, --device-id ID\n"
      "                         what the manifest's rollout rules are evaluated with\n"
      "  --metered              the network is metered (manifests asking for an\n"
      "                         unmetered network are deferred)\n"
      "  --json                 JSON events, one per line, on stdout\n"
      "  --no-progress          no progress bar\n"
      "  -v, --verbose          report retries\n"
      "\n"
      "Exit status: 0 published or up to date, 2 usage, 3-8 network errors fetching\n"
      "the manifest, 10 over budget, 13 store unusable, 14 manifest refused\n"
      "(invalid, signature, expired, downgrade), 15 integrity / incomplete, 16 not\n"
      "targeted by the rollout or deferred. See netstash-warm(1).\n";
  return run_warm("warm", usage, 0, argc, argv);
}

int cmd_install(int argc, char **argv) {
  static const char usage[] =
      "usage: netstash install BUNDLE --profile DIR --trust PUBFILE [--json]\n"
      "\n"
      "Installs an offline bundle (written by `netstash pack`) with no network:\n"
      "the manifest's signature and every body are verified exactly as for a warm.\n"
      "Options and exit status as for netstash warm.\n";
  return run_warm("install", usage, 1, argc, argv);
}
