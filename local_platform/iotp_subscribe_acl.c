/*
 * iotp_subscribe_acl: a Mosquitto 2.0 plugin (plugin API v5) that checks SUBSCRIBE.
 *
 * Why: Mosquitto 2.0's acl_file grants every SUBSCRIBE (src/security_default.c,
 * mosquitto_acl_check_default: "FIXME - implement ACL subscription strings") and checks read
 * rights only per delivered message, so a device could join ingest's shared subscription and
 * have its share of other devices' telemetry dropped. This plugin refuses (SUBACK 0x87 in
 * MQTT 5, 0x80 in 3.1.1) any subscription outside the client's own tree, devices/<user>/,
 * or outside what the ACL file lets it read (plugin_opt_acl_file: the "topic read" lines of
 * its "user" block, which `iotp broker-sync` writes from the device's profile, issue 25), for
 * every user except the service accounts. A filter is allowed when every topic it can match
 * is matched by one of those read patterns. It defers everything else (publish, read) to
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
#define USER_PREFIX "user "
#define READ_PREFIX "topic read "
#define READWRITE_PREFIX "topic readwrite "
#define DEVICE_PREFIX "devices/"
#define MAX_SERVICES 64
#define MAX_NAME 256

/* One "topic read" grant of the ACL file: the user it belongs to, and its pattern. */
struct grant {
	char *username;
	char *pattern;
	struct grant *next;
};

static mosquitto_plugin_id_t *plugin_id;
static char *password_file;
static char *acl_file;
static struct grant *grants;
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

static void free_grants(void)
{
	while(grants != NULL){
		struct grant *next = grants->next;
		free(grants->username);
		free(grants->pattern);
		free(grants);
		grants = next;
	}
}

static void add_grant(const char *username, const char *pattern)
{
	struct grant *grant = malloc(sizeof(*grant));

	if(grant == NULL) return;
	grant->username = strdup(username);
	grant->pattern = strdup(pattern);
	if(grant->username == NULL || grant->pattern == NULL){
		free(grant->username);
		free(grant->pattern);
		free(grant);
		return;
	}
	grant->next = grants;
	grants = grant;
}

/* The read grants of every user block of the ACL file (topics may hold spaces: the topic is
 * the rest of the line, as Mosquitto reads it). */
static void load_grants(void)
{
	FILE *file;
	char line[4096];
	char user[MAX_NAME] = "";

	free_grants();
	if(acl_file == NULL) return;
	file = fopen(acl_file, "r");
	if(file == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotp_subscribe_acl: cannot read %s", acl_file);
		return;
	}
	while(fgets(line, sizeof(line), file)){
		line[strcspn(line, "\r\n")] = '\0';
		if(strncmp(line, USER_PREFIX, strlen(USER_PREFIX)) == 0){
			if(strlen(line + strlen(USER_PREFIX)) < MAX_NAME){
				strcpy(user, line + strlen(USER_PREFIX));
			}else{
				user[0] = '\0';
			}
		}else if(user[0] != '\0' && strncmp(line, READ_PREFIX, strlen(READ_PREFIX)) == 0){
			add_grant(user, line + strlen(READ_PREFIX));
		}else if(user[0] != '\0'
				&& strncmp(line, READWRITE_PREFIX, strlen(READWRITE_PREFIX)) == 0){
			add_grant(user, line + strlen(READWRITE_PREFIX));
		}
	}
	fclose(file);
}

/* True when every topic ``filter`` can match is matched by ``pattern`` (both MQTT filters,
 * compared level by level: '#' in the pattern covers the rest, '+' one level that is not
 * '#'; a literal only the same literal). */
static bool covers(const char *pattern, const char *filter)
{
	while(true){
		size_t plen = strcspn(pattern, "/");
		size_t flen = strcspn(filter, "/");

		if(plen == 1 && pattern[0] == '#') return true;
		if(flen == 1 && filter[0] == '#') return false;
		if(plen == 1 && pattern[0] == '+'){
			/* any one level of the filter, '+' included */
		}else if(plen != flen || strncmp(pattern, filter, plen) != 0){
			return false;
		}
		pattern += plen;
		filter += flen;
		if(*filter == '\0'){
			/* "a/#" matches "a" too */
			return *pattern == '\0' || strcmp(pattern, "/#") == 0;
		}
		if(*pattern == '\0') return false;
		pattern++;
		filter++;
	}
}

static bool granted(const char *username, const char *filter)
{
	for(struct grant *grant = grants; grant != NULL; grant = grant->next){
		if(strcmp(grant->username, username) == 0 && covers(grant->pattern, filter)) return true;
	}
	return false;
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
	if(granted(username, ed->topic)) return MOSQ_ERR_PLUGIN_DEFER;
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
	load_grants();
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
		}else if(strcmp(options[i].key, "acl_file") == 0){
			acl_file = strdup(options[i].value);
			if(acl_file == NULL) return MOSQ_ERR_NOMEM;
		}
	}
	if(password_file == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotp_subscribe_acl: plugin_opt_password_file is required");
		return MOSQ_ERR_INVAL;
	}
	load_services();
	load_grants();
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
	free(acl_file);
	acl_file = NULL;
	free_grants();
	return MOSQ_ERR_SUCCESS;
}
