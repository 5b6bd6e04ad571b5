/*
 * iotp_subscribe_acl: a Mosquitto 2.0 plugin (plugin API v5) that checks SUBSCRIBE.
 *
 * Why: Mosquitto 2.0's acl_file grants every SUBSCRIBE (src/security_default.c,
 * mosquitto_acl_check_default: "FIXME - implement ACL subscription strings") and checks read
 * rights only per delivered message, so a device could join ingest's shared subscription and
 * have its share of other devices' telemetry dropped. This plugin refuses (SUBACK 0x87 in
 * MQTT 5, 0x80 in 3.1.1) any subscription outside the client's own tree, devices/<user>/,
 * for every user except the service accounts. It defers everything else (publish, read) to
 * the password and ACL files, which stay the source of truth.
 *
 * Service accounts are the users `iotp broker-sync` marks with a "# iotp-service <name>"
 * line in the password file (plugin_opt_password_file); the list is re-read on every reload
 * (SIGHUP), like the password file itself.
 *
 * Self-contained: the few declarations below are Mosquitto 2.0's (include/mosquitto.h,
 * mosquitto_broker.h, mosquitto_plugin.h; unchanged from 2.0.0 to 2.0.20), so that it builds
 * with a C compiler alone. Build: cc -shared -fPIC -O2 -o iotp_subscribe_acl.so this file.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mosquitto;
typedef struct mosquitto_plugin_id_t mosquitto_plugin_id_t;
struct mosquitto_opt {
	char *key;
	char *value;
};
struct mosquitto_evt_acl_check {
	void *future;
	struct mosquitto *client;
	const char *topic;
	const void *payload;
	void *properties;
	int access;
	uint32_t payloadlen;
	uint8_t qos;
	bool retain;
	void *future2[4];
};
typedef int (*MOSQ_FUNC_generic_callback)(int, void *, void *);
int mosquitto_callback_register(mosquitto_plugin_id_t *identifier, int event,
		MOSQ_FUNC_generic_callback cb_func, const void *event_data, void *userdata);
int mosquitto_callback_unregister(mosquitto_plugin_id_t *identifier, int event,
		MOSQ_FUNC_generic_callback cb_func, const void *event_data);
const char *mosquitto_client_username(const struct mosquitto *client);
void mosquitto_log_printf(int level, const char *fmt, ...);

#define MOSQ_EVT_RELOAD 1
#define MOSQ_EVT_ACL_CHECK 2
#define MOSQ_ACL_SUBSCRIBE 0x04
#define MOSQ_ERR_SUCCESS 0
#define MOSQ_ERR_NOMEM 1
#define MOSQ_ERR_INVAL 3
#define MOSQ_ERR_ACL_DENIED 12
#define MOSQ_ERR_PLUGIN_DEFER 17
#define MOSQ_LOG_NOTICE 0x02
#define MOSQ_LOG_ERR 0x08

#define SERVICE_PREFIX "# iotp-service "
#define DEVICE_PREFIX "devices/"
#define MAX_SERVICES 64
#define MAX_NAME 256

static mosquitto_plugin_id_t *plugin_id;
static char *password_file;
static char services[MAX_SERVICES][MAX_NAME];
static int service_count;

static void load_services(void)
{
	FILE *file;
	char line[1024];
	size_t prefix = strlen(SERVICE_PREFIX);

	service_count = 0;
	file = fopen(password_file, "r");
	if(file == NULL){
		/* No service account: every user is held to its own tree. */
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotp_subscribe_acl: cannot read %s", password_file);
		return;
	}
	while(fgets(line, sizeof(line), file) && service_count < MAX_SERVICES){
		if(strncmp(line, SERVICE_PREFIX, prefix) == 0){
			line[strcspn(line, "\r\n")] = '\0';
			if(strlen(line + prefix) > 0 && strlen(line + prefix) < MAX_NAME){
				strcpy(services[service_count++], line + prefix);
			}
		}
	}
	fclose(file);
}

static bool is_service(const char *username)
{
	for(int i = 0; i < service_count; i++){
		if(strcmp(services[i], username) == 0) return true;
	}
	return false;
}

/* True when the filter lies inside devices/<username>/ (a $share filter never does). */
static bool in_own_tree(const char *username, const char *filter)
{
	size_t plen = strlen(DEVICE_PREFIX);
	size_t ulen = strlen(username);

	return strncmp(filter, DEVICE_PREFIX, plen) == 0
		&& strncmp(filter + plen, username, ulen) == 0
		&& filter[plen + ulen] == '/'
		&& filter[plen + ulen + 1] != '\0';
}

static int acl_check_callback(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username;

	(void)event;
	(void)userdata;
	if(ed->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_PLUGIN_DEFER;
	username = mosquitto_client_username(ed->client);
	if(username == NULL || ed->topic == NULL) return MOSQ_ERR_ACL_DENIED;
	if(is_service(username)) return MOSQ_ERR_PLUGIN_DEFER;
	if(in_own_tree(username, ed->topic)) return MOSQ_ERR_PLUGIN_DEFER;
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"iotp_subscribe_acl: refused subscription of \"%s\" to \"%s\"", username, ed->topic);
	return MOSQ_ERR_ACL_DENIED;
}

static int reload_callback(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	load_services();
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "password_file") == 0){
			password_file = strdup(options[i].value);
			if(password_file == NULL) return MOSQ_ERR_NOMEM;
		}
	}
	if(password_file == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotp_subscribe_acl: plugin_opt_password_file is required");
		return MOSQ_ERR_INVAL;
	}
	load_services();
	mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, reload_callback, NULL, NULL);
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, acl_check_callback, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, acl_check_callback, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, reload_callback, NULL);
	free(password_file);
	password_file = NULL;
	return MOSQ_ERR_SUCCESS;
}
